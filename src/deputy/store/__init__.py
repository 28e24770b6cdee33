"""Storage backends behind the domain's protocols (audit log, counters, keys)."""
