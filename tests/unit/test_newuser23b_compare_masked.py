"""Round 23b of new-user flows: ``compare`` on a Transformer encoder with a padding mask.

torch's ``nn.TransformerEncoder(..., src_key_padding_mask=pad)`` writes ``-inf`` into the attention
scores of padded keys.  Every masked tensor (the mask, the scores plus the mask) then read cosine
NaN in ``npuflow compare``, with a numpy "invalid value encountered in subtract" RuntimeWarning on
the console and NaN in compare.json, though float and quantized model agreed on every ``-inf``.
Positions where both hold the same infinity now agree and are left out; any other disagreement
still shows.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from npuflow.analyze.compare import Pooled, similarity


def _scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (2, 4, 8, 8))
    ref[..., 6:] = -np.inf  # two padded keys
    got = ref + rng.normal(0, 0.01, ref.shape)
    return ref, got


def test_agreeing_infinities_are_left_out_without_a_warning():
    ref, got = _scores()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cos, err = similarity(ref, got)
    finite = np.isfinite(ref)
    want_cos, want_err = similarity(ref[finite], got[finite])
    assert cos == want_cos > 0.999 and err == want_err < 0.02


def test_a_disagreeing_infinity_or_nan_still_reads_as_one():
    ref, got = _scores()
    got[0, 0, 0, 6] = 1.0  # the quantized model lost one mask entry
    assert not similarity(ref, got)[0] > 0.99
    got = ref.copy()
    got[0, 0, 0, 0] = np.nan
    assert math.isnan(similarity(ref, got)[0])


def test_pooling_over_samples_keeps_the_finite_statistic():
    ref, got = _scores()
    pooled = Pooled()
    for r, g in zip(ref, got):
        pooled.add(r, g)
    assert math.isfinite(pooled.cosine) and pooled.cosine > 0.999
