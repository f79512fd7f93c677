"""Test support for crystal-rt and for software that embeds it (placeholder, filled below)."""
