"""Layer-wise least-squares data: the input patches a Conv/ConvTranspose/Gemm/MatMul multiplies by its weights.

AdaRound and AdaQuant solve one small problem per layer: ``W @ X + b ~ Y`` where the columns of
``X`` are input patches (im2col) at sampled output positions.  A ``ConvTranspose``'s patches are
those of the stride-1 convolution it equals (:func:`.layers.transposed_conv_rows`): its input with
``stride - 1`` zeros between neighbours, padded by ``dilation * (kernel - 1) - pad`` (plus the
output padding at the end).  Sampling a fixed number of
positions per calibration batch keeps memory bounded; the positions depend only on the layer
name, the batch index and the tensor shape, so the float and the quantized model are sampled at
the same places.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx

from ...graph import attr


class PatchSampler:
    """Samples ``(groups, K, m)`` patch matrices from a layer's input tensor."""

    def __init__(self, node: onnx.NodeProto, weight_shape: tuple[int, ...], per_batch: int) -> None:
        self.node = node
        self.op = node.op_type
        self.weight_shape = weight_shape
        self.per_batch = per_batch
        self.conv = self.op in ("Conv", "ConvTranspose")
        self.groups = int(attr(node, "group", 1)) if self.conv else 1
        self.interleave: list[int] = []   # ConvTranspose: its strides, the input's zero interleaving
        if self.conv:
            k = len(weight_shape) - 2
            self.kernel = list(attr(node, "kernel_shape", weight_shape[2:]))
            self.strides = list(attr(node, "strides", [1] * k))
            self.dilations = list(attr(node, "dilations", [1] * k))
            self.pads = list(attr(node, "pads", [0] * 2 * k))
            self.auto_pad = attr(node, "auto_pad", "NOTSET")
        if self.op == "ConvTranspose":
            out_pad = list(attr(node, "output_padding", [0] * k))
            self.fixed_shape = bool(attr(node, "output_shape", []))
            self.interleave, self.strides = self.strides, [1] * k
            reach = [d * (kk - 1) for d, kk in zip(self.dilations, self.kernel)]
            self.pads = ([r - p for r, p in zip(reach, self.pads[:k])]
                         + [r - p + o for r, p, o in zip(reach, self.pads[k:], out_pad)])

    @property
    def supported(self) -> bool:
        if not self.conv:
            return True
        if self.op == "ConvTranspose":   # explicit pads no larger than the kernel's reach, no output_shape
            return (self.auto_pad == "NOTSET" and not self.fixed_shape and len(self.kernel) == 2
                    and min(self.pads) >= 0)
        return self.auto_pad in ("NOTSET", "VALID") and len(self.kernel) in (1, 2)

    def _input(self, x: np.ndarray) -> np.ndarray:
        """The input the equivalent convolution reads: a ConvTranspose's with its zeros interleaved."""
        if not self.interleave or all(s == 1 for s in self.interleave):
            return x
        sh, sw = self.interleave
        up = np.zeros(x.shape[:2] + ((x.shape[2] - 1) * sh + 1, (x.shape[3] - 1) * sw + 1), x.dtype)
        up[:, :, ::sh, ::sw] = x
        return up

    def _rng(self, batch: int) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.node.name}|{self.node.output[0]}|{batch}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _frame(self, shape: tuple[int, ...]):
        """The 2-D kernel, strides, dilations, pads and output size of an equivalent-convolution input
        of ``shape`` (a 1-D convolution as a 2-D one of width 1)."""
        if len(self.kernel) == 1:
            shape = tuple(shape) + (1,)
            kernel, strides, dil = self.kernel + [1], self.strides + [1], self.dilations + [1]
            pads = [self.pads[0], 0, self.pads[1], 0]
        else:
            kernel, strides, dil, pads = self.kernel, self.strides, self.dilations, self.pads
        oh = (shape[2] + pads[0] + pads[2] - dil[0] * (kernel[0] - 1) - 1) // strides[0] + 1
        ow = (shape[3] + pads[1] + pads[3] - dil[1] * (kernel[1] - 1) - 1) // strides[1] + 1
        return kernel, strides, dil, pads, oh, ow

    def _geometry(self, x: np.ndarray):
        """``x`` as 4-D, zero-padded, with the 2-D kernel, strides, dilations and output size."""
        kernel, strides, dil, pads, oh, ow = self._frame(x.shape)
        x = x[..., None] if len(self.kernel) == 1 else x
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        return xp, kernel, strides, dil, oh, ow

    def count(self, shape: tuple[int, ...]) -> int:
        """How many columns :meth:`sample` takes from an input of ``shape``, without sampling: a
        caller streaming statistics over the samples splits the columns where it has to."""
        if not self.conv:
            return min(self.per_batch, int(np.prod(shape[:-1])))
        if self.interleave:
            shape = tuple(shape[:2]) + tuple((d - 1) * s + 1 for d, s in zip(shape[2:], self.interleave))
        *_, oh, ow = self._frame(shape)
        return min(self.per_batch, shape[0] * oh * ow)

    def mean_patch(self, x: np.ndarray) -> np.ndarray:
        """``(groups, K)``: the mean input patch over every output position of ``x``.

        By linearity, a weight change ``dW`` shifts the layer's mean output by ``dW @ mean_patch``
        exactly, zero padding included (a per-channel input mean misses the border taps, which
        dominate on the few-row feature maps of text recognisers).
        """
        if not self.conv:
            return x.reshape(-1, x.shape[-1]).mean(axis=0, dtype=np.float64)[None]
        x = self._input(x)
        if all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) and not any(self.pads):
            return x.mean(axis=tuple(i for i in range(x.ndim) if i != 1), dtype=np.float64).reshape(self.groups, -1)
        xp, kernel, strides, dil, oh, ow = self._geometry(x)
        taps = np.empty((x.shape[1], kernel[0], kernel[1]))
        for j in range(kernel[1]):  # one pass over the tensor per kernel column, then cheap rows
            cols = xp[..., j * dil[1]: j * dil[1] + (ow - 1) * strides[1] + 1: strides[1]].sum(axis=(0, 3), dtype=np.float64)
            for i in range(kernel[0]):
                taps[:, i, j] = cols[:, i * dil[0]: i * dil[0] + (oh - 1) * strides[0] + 1: strides[0]].sum(axis=1)
        return (taps / (x.shape[0] * oh * ow)).reshape(self.groups, -1)

    def sample(self, x: np.ndarray, batch: int) -> np.ndarray:
        """``(groups, K, m)`` float32 patches from input ``x`` (same positions for same batch/shape).

        Asked for at least every position (``columns: all``), every position is taken in order by
        strided copies (:meth:`_every_position`): the same columns, in the same order, as a draw of
        all of them sorted, without drawing and sorting a permutation of every position and
        fancy-indexing it, which took most of GPTQ's ``columns: all`` time (session 37)."""
        if not self.conv:
            rows = x.reshape(-1, x.shape[-1])
            if self.per_batch >= rows.shape[0]:
                return np.ascontiguousarray(rows.T[None], dtype=np.float32)
            idx = self._rng(batch).choice(rows.shape[0], size=self.per_batch, replace=False)
            return rows[np.sort(idx)].T[None].astype(np.float32)
        xp, kernel, strides, dil, oh, ow = self._geometry(self._input(x))
        total = xp.shape[0] * oh * ow
        if self.per_batch >= total:
            return self._every_position(xp, kernel, strides, dil, oh, ow)
        idx = np.sort(self._rng(batch).choice(total, size=self.per_batch, replace=False))
        return self._gather(xp, kernel, strides, dil, oh, ow, idx)

    def _gather(self, xp: np.ndarray, kernel: list[int], strides: list[int], dil: list[int], oh: int, ow: int,
                idx: np.ndarray) -> np.ndarray:
        """``(groups, K, len(idx))``: the patches at output positions ``idx`` (flat over batch, rows,
        columns) of padded input ``xp``, gathered by index."""
        c = xp.shape[1]
        b, rem = np.divmod(idx, oh * ow)
        py, px = np.divmod(rem, ow)
        ky = np.arange(kernel[0]) * dil[0]
        kx = np.arange(kernel[1]) * dil[1]
        rows = py[:, None] * strides[0] + ky[None, :]               # (m, kh)
        cols = px[:, None] * strides[1] + kx[None, :]               # (m, kw)
        patches = xp[b[:, None, None, None], np.arange(c)[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]  # (m, c, kh, kw)
        g = self.groups
        patches = patches.reshape(len(idx), g, c // g * kernel[0] * kernel[1])
        return np.ascontiguousarray(patches.transpose(1, 2, 0)).astype(np.float32)

    def _every_position(self, xp: np.ndarray, kernel: list[int], strides: list[int], dil: list[int],
                        oh: int, ow: int) -> np.ndarray:
        """``(groups, K, n * oh * ow)``: the patches at every output position of padded input ``xp``
        in order (batch, rows, columns), one strided copy per kernel tap: :meth:`_gather` at every
        position, value for value."""
        n, c = xp.shape[:2]
        out = np.empty((c, kernel[0], kernel[1], n, oh, ow), np.float32)
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                tap = xp[:, :, i * dil[0]: i * dil[0] + (oh - 1) * strides[0] + 1: strides[0],
                         j * dil[1]: j * dil[1] + (ow - 1) * strides[1] + 1: strides[1]]
                out[:, i, j] = tap.transpose(1, 0, 2, 3)
        return out.reshape(self.groups, c // self.groups * kernel[0] * kernel[1], n * oh * ow)


def grouped_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """``(Cout, Cin/g, *k)`` -> ``(g, Cout/g, K)``."""
    return w.reshape(groups, w.shape[0] // groups, -1)


def ungrouped_weight(wg: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return wg.reshape(shape)
