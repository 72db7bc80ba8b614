"""Text before synthesis: sentence splitting, language detection, the pronunciation lexicon and normalisation."""
