"""Batches: creation and manifests (service), lines at the boundary (lines), and the scheduler that feeds the broker."""
