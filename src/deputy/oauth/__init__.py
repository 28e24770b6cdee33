"""The standard OAuth surface: token endpoint, client authentication, introspection, revocation."""
