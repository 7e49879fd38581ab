"""Bundled samplers."""
