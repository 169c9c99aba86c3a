"""Accuracy analysis: per-layer sensitivity and accuracy-targeted mixed precision."""
