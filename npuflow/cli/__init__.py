"""Command-line interface (``npuflow ...``)."""

from .app import app, main, run

__all__ = ["app", "main", "run"]
