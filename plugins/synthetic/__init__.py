"""Bundled plugin `synthetic` (being written; registers nothing yet)."""
