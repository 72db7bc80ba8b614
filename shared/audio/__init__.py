"""Audio: codecs and formats, reference clips, mastering (fit to slot, trim, loudness), subtitles and streaming."""
