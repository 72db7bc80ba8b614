"""FAKE of `cosyvoice.utils` (tests only)."""
