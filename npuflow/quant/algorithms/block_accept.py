"""Output-aware acceptance of a block's learned rounding (``brecq``, issue 18).

:func:`.block_recon.reconstruct` keeps a block's learned codes when they lower the *block's*
output error, but what the network needs is a lower error at *its* outputs.  A block's output
error weighs every channel and position alike, while the layers after it amplify some errors
and clip or pool others away, so a block can fit its own target better and still hand the rest
of the network an error it propagates worse than AdaRound's.  On EfficientNet-Lite0 and PP-OCRv4
det every block's own error fell or stayed while the model's calibration output error rose.

:class:`OutputCheck` therefore decides each block a second time, on the model: with the block's
learned codes written, the quantized model's output error on the calibration samples (the blocks
decided before it at their chosen codes, the ones after it still at AdaRound's) must not rise
above what the model had before the block, or the block goes back to the codes it started from.
The model's error starts at the layer-wise AdaRound model's and never rises, so ``brecq`` ends
at or below AdaRound's calibration output error.

That decision has a blind spot: the layers after a block were solved (by layer-wise AdaRound) on
the block's AdaRound outputs and have absorbed part of its error, so any new codes for the block
hand them inputs they were not fitted to, and most blocks' learned codes are reverted for it.
``block_accept: final`` is sequential BRECQ as the paper runs it:
every block keeps the codes it learned (when they lower its own error), so each block learns on
the outputs of the learned blocks before it and the downstream blocks adapt to every change;
one decision at the end (:meth:`OutputCheck.finish`) keeps the whole learned set or the AdaRound
model, whichever has the lower calibration output error.  Each block starts from its layers
solved again by AdaRound on the inputs the learned blocks before it give
(``fast_finetune._restart_block``), not from the first pass's codes, which were fitted to the
AdaRound blocks before it: a block's short learning from those did not reach AdaRound's error on
its new inputs, and the errors added up (docs/accuracy.md).

The measure is the one ``include_bias_corr: auto`` decides with
(:func:`.apply.relative_error`, an optimised ONNX Runtime session); ``per_block`` runs it on the
tail of the network only: the layers upstream of a block are final when the block is solved, so their
tensors, already computed for the block's inputs (:class:`.fast_finetune.QuantizedInputs`), are
fed instead of running the network from its inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx

from ...graph import slice_model
from .capture import Feed, run_outputs

if TYPE_CHECKING:
    from .block_recon import BlockResult, BlockRunner

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """A block's codes as decided on the model: ``reverted`` to its start codes or not, with the
    model's calibration output error before the block and with the codes it ends with."""

    reverted: bool
    error_before: float
    error_after: float


#: ``block_accept`` modes: decide each block on the model, or the whole learned set once at the end.
MODES = ("per_block", "final")


class OutputCheck:
    """The quantized model's output error against the float model's on the calibration samples."""

    def __init__(self, float_model: onnx.ModelProto, feeds: list[Feed], mode: str = "per_block") -> None:
        self.feeds = list(feeds)
        self.mode = mode
        self.reference = run_outputs(float_model, self.feeds)
        self.error: float | None = None   # the model's as it stands, after the blocks decided so far

    def measure(self, qmodel: onnx.ModelProto, known: dict[str, list[np.ndarray]]) -> float:
        """The error of ``qmodel``, run from the ``known`` tensors (``{tensor: value per sample}``,
        each computed by ``qmodel`` as it is now) to its outputs."""
        from .apply import relative_error   # apply imports fast_finetune, which imports this module

        part = slice_model(qmodel, [o.name for o in qmodel.graph.output], known)
        runs = [{**f, **{t: v[k] for t, v in known.items()}} for k, f in enumerate(self.feeds)]
        return relative_error(run_outputs(part, runs, spinning=False), self.reference)

    def decide(self, qmodel: onnx.ModelProto, runner: "BlockRunner", learned: dict[str, np.ndarray],
               known: dict[str, list[np.ndarray]], write: Callable[[dict[str, np.ndarray]], None]) -> Decision:
        """Keep ``learned`` (the block's codes, written into ``qmodel`` by ``write``) if the model's
        error does not rise, else write back ``runner.current`` (the codes the block started from)."""
        current = {k: v.numpy() for k, v in runner.current.items()}
        if self.mode == "final":   # kept for the blocks after it to learn on; decided in finish()
            write(learned)
            return Decision(False, float("nan"), float("nan"))
        if self.error is None:
            self.error = self.measure(qmodel, known)
        before = self.error
        if all(np.array_equal(learned[k], current[k]) for k in current):
            return Decision(False, before, before)   # nothing learned that differs
        write(learned)
        after = self.measure(qmodel, known)
        if after <= before:
            self.error = after
            return Decision(False, before, after)
        write(current)
        log.debug("brecq: block codes raise the calibration output error %.4g -> %.4g; reverted", before, after)
        return Decision(True, before, before)

    def finish(self, start: onnx.ModelProto, learned: onnx.ModelProto, blocks: list["BlockResult"]) -> onnx.ModelProto:
        """``final`` mode's one decision: ``learned`` (every block at its learned codes) when its
        calibration output error is not above ``start``'s (the AdaRound model the blocks started
        from), else ``start`` with every block marked reverted; ``blocks`` get the model's error
        before and after.  ``per_block`` mode decided already: ``learned`` is returned as it is."""
        if self.mode != "final" or not blocks:
            return learned
        before = relative_error_of(start, self.feeds, self.reference)
        after = relative_error_of(learned, self.feeds, self.reference)
        keep = after <= before
        for b in blocks:
            b.output_error_before, b.output_error_after = before, after if keep else before
            b.reverted = b.reverted or (not keep and b.error_after < b.error_before)
            if not keep:
                b.error_after = b.error_before
        log.info("brecq (block_accept final): calibration output error %.4g with AdaRound's codes, %.4g with the "
                 "learned blocks: %s", before, after, "learned blocks kept" if keep else "AdaRound's codes kept")
        return learned if keep else start


def relative_error_of(model: onnx.ModelProto, feeds: list[Feed], reference: list[list[np.ndarray]]) -> float:
    """:func:`.apply.relative_error` of ``model`` run on ``feeds`` against ``reference``."""
    from .apply import relative_error

    return relative_error(run_outputs(model, feeds), reference)
