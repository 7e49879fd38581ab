"""Bundled plugin `cvact` (being written; registers nothing yet)."""
