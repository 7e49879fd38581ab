"""Bundled plugin `university1652` (being written; registers nothing yet)."""
