"""Bundled plugin `vigor` (being written; registers nothing yet)."""
