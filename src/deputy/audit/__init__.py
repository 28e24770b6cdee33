"""Audit: decision records, the hash chain that makes them tamper-evident, and queries."""
