"""Evaluators whose weights ship in packages: Whisper ASR and the GE2E speaker encoder (numpy)."""
