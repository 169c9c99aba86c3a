"""Deterministic photo crops (scikit-image and scikit-learn bundled photos) for model tests."""

from __future__ import annotations

import numpy as np


def photo_crops(n: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """``n`` NCHW float crops normalised like EfficientNet-Lite (``(x - 0.5) / 0.5``)."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    imgs = list(load_sample_images().images) + [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        im = imgs[k % len(imgs)]
        h, w = im.shape[:2]
        y, x = rng.integers(0, h - size), rng.integers(0, w - size)
        c = im[y:y + size, x:x + size].astype(np.float32) / 255.0
        out.append(((c - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32))
    return out
