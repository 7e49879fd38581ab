"""Bundled plugin `gps` (being written; registers nothing yet)."""
