"""Does the calibration data look like what an image model is fed?  A cheap statistic of the samples.

Activation ranges are only as good as the samples they come from, and quantize's own similarity
check is measured on those same samples, so calibration on the wrong kind of data passes it: a
text recogniser (ddddocr's CRNN) calibrated on uniform noise reported 0.9993 and then read 1 of
12 rendered text lines as the float model does on cpu-int8 (12 of 12 once calibrated on text
lines).  Vitis AI and rknn-toolkit2 users are told to calibrate on real images; this module says
so when the samples plainly are not images.

The statistic is the correlation of neighbouring pixels.  Any photograph, scan, rendered text or
spectrogram has strongly correlated neighbours along rows or columns (the bundled MNIST
example's digits and the corpus' photo, text and page calibration sets all read 0.6 or more);
independent random values (``np.random.rand``/``randn``) read about 0.  It is invariant to any
per-input scale and offset, so it holds whatever normalisation the samples already carry, and
it needs no knowledge of the model.  Only inputs that are plainly images are judged: 4-D float,
uint8 or int8 tensors with at most 4 channels (NCHW or NHWC) and both spatial sides of 16 or more; audio, token,
tabular, state and feature inputs are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: neighbouring-pixel correlation under which an image input is taken for noise
NOISE_CORRELATION = 0.25
#: the smallest spatial side judged (an 8x8 "image" in a unit test is no photograph)
MIN_SIDE = 16
#: the most channels an image input has (gray, RGB, RGBA)
MAX_CHANNELS = 4
#: integer pixels judged too: ``npuflow build``'s models with preprocessing take uint8 NHWC images
IMAGE_INTEGER_TYPES = (np.dtype(np.uint8), np.dtype(np.int8))


@dataclass(frozen=True)
class NoiseInput:
    """An image input whose calibration samples have uncorrelated neighbouring pixels."""

    name: str
    correlation: float
    samples: int


def _spatial_axes(shape: Sequence[int]) -> tuple[int, int] | None:
    """The height and width axes of an image-shaped 4-D input, None for anything else."""
    if len(shape) != 4:
        return None
    if shape[1] <= MAX_CHANNELS and min(shape[2], shape[3]) >= MIN_SIDE:
        return 2, 3
    if shape[3] <= MAX_CHANNELS and min(shape[1], shape[2]) >= MIN_SIDE:
        return 1, 2
    return None


def _neighbour_correlation(x: np.ndarray, axis: int) -> float | None:
    """Pearson correlation of every value with its next neighbour along ``axis`` (None if constant)."""
    n = x.shape[axis]
    a = np.take(x, range(n - 1), axis=axis).ravel()
    b = np.take(x, range(1, n), axis=axis).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denom if denom > 0 else None


def noise_like_inputs(samples: Sequence[dict[str, np.ndarray]]) -> list[NoiseInput]:
    """The image inputs whose samples look like independent random values.

    A sample's correlation is the larger of the two spatial directions (a barcode or a text line
    may be correlated along one only); an input is noise-like when the mean over the samples is
    below :data:`NOISE_CORRELATION`.  Constant samples have no correlation and are not judged.
    """
    found: list[NoiseInput] = []
    names = list(samples[0]) if samples else []
    for name in names:
        values: list[float] = []
        for sample in samples:
            x = sample.get(name)
            if x is None or not (np.issubdtype(x.dtype, np.floating) or x.dtype in IMAGE_INTEGER_TYPES):
                continue
            axes = _spatial_axes(x.shape)
            if axes is None:
                continue
            both = [c for c in (_neighbour_correlation(x.astype(np.float64), a) for a in axes) if c is not None]
            if both:
                values.append(max(both))
        if values and float(np.mean(values)) < NOISE_CORRELATION:
            found.append(NoiseInput(name, float(np.mean(values)), len(values)))
    return found
