"""Bundled losses."""
