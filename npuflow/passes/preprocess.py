"""Input preprocessing as ONNX graph nodes: the device feeds its own format, the model converts.

A camera hands over nv12 (or yuv444, rgb, bgr, gray) bytes in its own layout, while the float
model was trained on, say, mean/scale-normalised NCHW BGR floats.  As hb_mapper does (seed 004
L1135-1231, spec A.5), the conversion is put *into the model*, so it is quantized and compiled
with the rest and the compiled model takes the runtime buffer directly:

``rt input (uint8) -> Cast -> [NHWC->NCHW] -> [nv12 chroma upsampling] -> [colour Conv with
mean/scale folded in, saturation] or [Sub mean, Mul scale] -> [NCHW->NHWC] -> the model's input``

The colour step is one 1x1 ``Conv`` (a 3x3 matrix plus bias, with the normalisation folded in
so that its output is in the model's small input range), which an NPU runs well; channel swaps
(rgb<->bgr) are the same ``Conv`` with a permutation matrix.  YUV uses the BT.601
coefficients, either full range (``regular``, the JPEG convention) or video range
(``bt601_video``: Y in [16, 235]), the convention of OpenCV's ``COLOR_YUV2RGB_NV12``.

:func:`to_runtime_format` is the inverse in numpy (train-format sample -> what the device
would feed); the build uses it to turn calibration samples, which users save in the train
format, into inputs of the preprocessed model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..model import infer_static_shapes
from ..numerics import RoundMode, round_values

#: Tie rule of a float pixel stored as uint8: OpenCV's ``saturate_cast<uchar>`` (``cvRound``, the
#: FPU's round half to even), which the camera/ISP buffers a runtime feeds are made with.
PIXEL_ROUND_MODE = RoundMode.HALF_EVEN

#: Rows R, G, B as functions of (Y, U, V) and the offsets removed first.
_YUV_TO_RGB = {
    "regular": (np.array([[1.0, 0.0, 1.402],
                          [1.0, -0.344136, -0.714136],
                          [1.0, 1.772, 0.0]]), np.array([0.0, 128.0, 128.0])),
    "bt601_video": (np.array([[1.164383, 0.0, 1.596027],
                              [1.164383, -0.391762, -0.812968],
                              [1.164383, 2.017232, 0.0]]), np.array([16.0, 128.0, 128.0])),
}
_SWAP = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class InputPreprocess:
    """How one graph input is fed at run time and what the model was trained on."""

    name: str
    shape: tuple[int, ...]  # the model's own input shape, in layout_train
    type_train: str  # rgb, bgr, yuv444, gray, featuremap
    layout_train: str  # NCHW or NHWC
    type_rt: str  # nv12, yuv444, rgb, bgr, gray, featuremap
    layout_rt: str
    space_and_range: str = "regular"
    mean: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    @property
    def nchw_shape(self) -> tuple[int, ...]:
        s = self.shape
        return s if self.layout_train == "NCHW" or len(s) != 4 else (s[0], s[3], s[1], s[2])

    def runtime_shape(self) -> tuple[int, ...]:
        """Shape of the buffer the device feeds: nv12 is ``[N, H*3/2, W]`` (Y plane, then the
        interleaved UV plane), everything else is the NCHW shape in ``layout_rt``."""
        if len(self.shape) != 4:
            return self.shape
        n, c, h, w = self.nchw_shape
        if self.type_rt == "nv12":
            return (n, h * 3 // 2, w)
        return (n, c, h, w) if self.layout_rt == "NCHW" else (n, h, w, c)

    def runtime_dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.type_rt == "featuremap" else np.uint8)

    def is_identity(self) -> bool:
        return (self.type_rt == self.type_train and self.layout_rt == self.layout_train
                and self.mean is None and self.scale is None and self.type_rt == "featuremap")


def colour_matrix(pre: InputPreprocess) -> tuple[np.ndarray, np.ndarray] | None:
    """``out = M @ in + b`` taking the runtime channels to the train channels, or ``None``
    when they are the same; a YUV source needs clipping to [0, 255] afterwards."""
    rt = "yuv444" if pre.type_rt == "nv12" else pre.type_rt
    train = pre.type_train
    if rt == train:
        return None
    if rt == "yuv444":
        m, offset = _YUV_TO_RGB[pre.space_and_range]
        if train == "bgr":
            m = _SWAP @ m
        return m, -m @ offset
    return _SWAP, np.zeros(3)  # rgb <-> bgr


def insert_preprocessing(model: onnx.ModelProto, inputs: Sequence[InputPreprocess]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs take the runtime format and convert it in the graph.

    Each graph input keeps its name (so callers feed the same name) but changes type and shape;
    the tensor the original nodes read is renamed ``<name>_preprocessed``.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for pre in inputs:
        if pre.is_identity():
            continue
        target = f"{pre.name}_preprocessed"
        _rename_uses(graph, pre.name, target)
        nodes, inits = _preprocess_nodes(pre, target)
        for i in range(len(nodes) - 1, -1, -1):
            graph.node.insert(0, nodes[i])
        graph.initializer.extend(inits)
        vi = next(v for v in graph.input if v.name == pre.name)
        vi.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(pre.runtime_dtype())
        vi.type.tensor_type.ClearField("shape")
        for d in pre.runtime_shape():
            vi.type.tensor_type.shape.dim.add().dim_value = d
        entry = out.metadata_props.add()
        entry.key = f"npuflow.preprocess.{pre.name}"
        entry.value = json.dumps(asdict(pre))
    del graph.value_info[:]
    return infer_static_shapes(out)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for o in graph.output:
        if o.name == old:
            raise ValueError(f"input {old!r} is also a graph output; it cannot be preprocessed")


def _preprocess_nodes(pre: InputPreprocess, target: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The node chain from the runtime input ``pre.name`` to the tensor ``target``."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    p = f"{pre.name}_pre"
    cur = pre.name

    def const(suffix: str, value: np.ndarray) -> str:
        name = f"{p}_{suffix}"
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(op: str, ins: list[str], suffix: str, **attrs) -> str:
        nonlocal cur
        name = f"{p}_{suffix}"
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        cur = name
        return name

    if pre.type_rt != "featuremap":
        add("Cast", [cur], "cast", to=TensorProto.FLOAT)
    if pre.type_rt == "nv12":
        n, _, h, w = pre.nchw_shape
        y = add("Slice", [cur, const("y_start", np.array([0])), const("y_end", np.array([h])),
                          const("axis1", np.array([1]))], "y_plane")
        y = add("Reshape", [y, const("y_shape", np.array([n, 1, h, w]))], "y")
        uv = add("Slice", [pre.name + "_pre_cast", const("uv_start", np.array([h])),
                           const("uv_end", np.array([h * 3 // 2])), f"{p}_axis1"], "uv_plane")
        uv = add("Reshape", [uv, const("uv_shape", np.array([n, h // 2, w // 2, 2]))], "uv_pairs")
        uv = add("Transpose", [uv], "uv_nchw", perm=[0, 3, 1, 2])
        uv = add("Resize", [uv, "", const("uv_scales", np.array([1, 1, 2, 2], np.float32))], "uv",
                 mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        add("Concat", [y, uv], "yuv444", axis=1)
    elif pre.layout_rt == "NHWC" and len(pre.shape) == 4:
        add("Transpose", [cur], "nchw", perm=[0, 3, 1, 2])
    colour = colour_matrix(pre)
    if colour is not None:
        _colour_and_norm(pre, colour, cur, add, const)
    else:
        channel_shape = (1, -1, 1, 1) if len(pre.shape) == 4 else (1, -1) + (1,) * (len(pre.shape) - 2)
        if pre.mean is not None:
            add("Sub", [cur, const("mean", np.array(pre.mean, np.float32).reshape(channel_shape))], "sub_mean")
        if pre.scale is not None:
            add("Mul", [cur, const("scale", np.array(pre.scale, np.float32).reshape(channel_shape))], "mul_scale")
    if pre.layout_train == "NHWC" and len(pre.shape) == 4:
        add("Transpose", [cur], "nhwc", perm=[0, 2, 3, 1])
    if not nodes:
        add("Identity", [cur], "identity")
    nodes[-1].output[0] = target
    return nodes, inits


def _colour_and_norm(pre: InputPreprocess, colour: tuple[np.ndarray, np.ndarray], x: str,
                     add: Callable[..., str], const: Callable[[str, np.ndarray], str]) -> None:
    """One 1x1 Conv doing the colour conversion *and* the normalisation,
    ``scale * (M @ x + b - mean)``, then the [0, 255] saturation moved into the normalised
    domain.  Folding matters for quantization: the Conv's output is then in the model's small
    input range instead of [0, 255], so an 8-bit power-of-two scale keeps its resolution."""
    m, b = colour
    mean = np.broadcast_to(np.asarray(pre.mean if pre.mean is not None else (0.0,), np.float64), (3,))
    scale = np.broadcast_to(np.asarray(pre.scale if pre.scale is not None else (1.0,), np.float64), (3,))
    weight = scale[:, None] * m
    x = add("Conv", [x, const("colour_w", weight.astype(np.float32).reshape(3, 3, 1, 1)),
                 const("colour_b", (scale * (b - mean)).astype(np.float32))], "colour")
    if pre.type_rt not in ("nv12", "yuv444"):
        return
    ends = np.stack([scale * (0.0 - mean), scale * (255.0 - mean)])
    low, high = ends.min(axis=0), ends.max(axis=0)
    if np.all(low == low[0]) and np.all(high == high[0]):
        add("Clip", [x, const("min", np.array(low[0], np.float32)), const("max", np.array(high[0], np.float32))],
            "colour_clip")
    else:
        x = add("Max", [x, const("min", low.astype(np.float32).reshape(1, 3, 1, 1))], "colour_min")
        add("Min", [x, const("max", high.astype(np.float32).reshape(1, 3, 1, 1))], "colour_max")


def to_runtime_format(sample: np.ndarray, pre: InputPreprocess) -> np.ndarray:
    """A train-format sample (before mean/scale, in ``layout_train``) -> the runtime buffer the
    device would feed for the same picture: the inverse colour matrix, rounding to uint8, and
    2x2 chroma averaging for nv12."""
    x = np.asarray(sample, dtype=np.float64).reshape(pre.shape)
    if pre.type_rt == "featuremap":
        if pre.layout_rt != pre.layout_train and x.ndim == 4:
            x = x.transpose(0, 3, 1, 2) if pre.layout_train == "NHWC" else x.transpose(0, 2, 3, 1)
        return x.astype(np.float32)
    if pre.layout_train == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    colour = colour_matrix(pre)
    if colour is not None:
        m, b = colour
        x = np.einsum("ij,njhw->nihw", np.linalg.inv(m), x - b.reshape(1, 3, 1, 1))
    x = np.clip(round_values(x, PIXEL_ROUND_MODE), 0, 255)
    if pre.type_rt == "nv12":
        n, _, h, w = x.shape
        uv = x[:, 1:].reshape(n, 2, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        uv = round_values(uv, PIXEL_ROUND_MODE).transpose(0, 2, 3, 1).reshape(n, h // 2, w)
        return np.concatenate([x[:, 0], uv], axis=1).astype(np.uint8)
    if pre.layout_rt == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return x.astype(np.uint8)
