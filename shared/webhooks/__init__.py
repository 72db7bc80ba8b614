"""Webhooks on the shared side: target checks (SSRF rules) and the delivery records."""
