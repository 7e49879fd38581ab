"""Bundled plugin `cvusa` (being written; registers nothing yet)."""
