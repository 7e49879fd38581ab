"""Bundled plugin `dss` (being written; registers nothing yet)."""
