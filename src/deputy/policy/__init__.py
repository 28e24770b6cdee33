"""Policy at issuance: workflows, tools, tiers, TTL bounds and daily limits."""
