"""Bundled encoders."""
