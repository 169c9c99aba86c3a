"""Float graph rewrites, each a small function with a docstring and a test."""
