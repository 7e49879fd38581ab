"""Bundled transforms."""
