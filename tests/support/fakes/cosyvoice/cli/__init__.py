"""FAKE of `cosyvoice.cli` (tests only)."""
