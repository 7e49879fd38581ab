"""Bundled rerankers."""
