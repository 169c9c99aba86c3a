"""Whole-tensor integer kernels of the NPU executor (NCHW, the compiled shapes).

Accumulation is exact: products of integer codes are summed in float32 (ONNX Runtime's MLAS
convolution, or BLAS for matrix products) in chunks short
enough that every partial sum stays an integer below 2^24 (``k_chunk``, fixed at compile time
from the weights and the input type), and chunks are added in float64; the result is converted
to int64 before requantisation.  Requantisation is :mod:`npuflow.numerics` only.

Each ``prepare_<op>`` turns one manifest op plus its blobs into a closure ``run(inputs) ->
outputs`` over numpy arrays; prepared constants (float32 weight matrices, lookup tables) are
built once per session and only read afterwards, so one prepared program serves many threads.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .. import numerics as nm
from ..numerics_softmax import softmax_codes
from ..ort_session import open_session
from .epilogues import out_type, per_channel, make_epilogue, make_float_finish

Kernel = Callable[[list[np.ndarray]], list[np.ndarray]]


# --- helpers --------------------------------------------------------------------------------


def _chunked_matmul(a: np.ndarray, b: np.ndarray, k_chunk: int, a_k_axis_last: bool = True) -> np.ndarray:
    """Exact integer ``a @ b`` of integer-valued float32 operands as int64.

    ``a`` is (..., M, K) and ``b`` (..., K, N); the K reduction is split so that each float32
    product stays exact, and the parts are added in float64.
    """
    k = a.shape[-1]
    if k <= k_chunk:
        return np.matmul(a, b).astype(np.int64)
    total = None
    for s in range(0, k, k_chunk):
        part = np.matmul(a[..., s:s + k_chunk], b[..., s:s + k_chunk, :]).astype(np.float64)
        total = part if total is None else total + part
    return total.astype(np.int64)


def _lut(table: np.ndarray, qmin: int) -> Callable[[np.ndarray], np.ndarray]:
    """Code-to-code lookup; 8-bit inputs index a rotated table through their byte view."""
    table = np.asarray(table)
    if table.size == 256:
        rotated = np.ascontiguousarray(table[(np.arange(256) - qmin) % 256])

        def run8(x: np.ndarray) -> np.ndarray:
            return rotated[x.view(np.uint8)]

        return run8

    def run(x: np.ndarray) -> np.ndarray:
        return table[x.astype(np.int64) - qmin]

    return run


def _maybe_lut(blobs: dict, key: str, qmin: int):
    return _lut(blobs[key], qmin) if key in blobs else None


def _pad_nchw(x: np.ndarray, pads: list[int], value=0) -> np.ndarray:
    t, l, b, r = pads
    if not (t or l or b or r):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def _taps(xp: np.ndarray, kernel, strides, dil, out_hw):
    """Yield ``(i, j, view)`` for every kernel position: the strided input slice it reads."""
    ho, wo = out_hw
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            h0, w0 = i * dil[0], j * dil[1]
            yield i, j, xp[:, :, h0:h0 + strides[0] * (ho - 1) + 1:strides[0],
                           w0:w0 + strides[1] * (wo - 1) + 1:strides[1]]


# --- kernels --------------------------------------------------------------------------------


def _conv_accumulator(w: np.ndarray, bias: np.ndarray | None, attrs: dict, in_dtype: str) -> Callable:
    """Exact integer convolution sums through ONNX Runtime's float32 ``Conv`` (MLAS).

    The graph casts the integer codes to float32 and subtracts the zero point, so the operands
    are integer-valued; every partial sum of a reduction no longer than ``k_chunk`` is an
    integer below 2^24, which float32 computes exactly in any order.  Longer reductions are split
    by input channel, each part cast to float64 and the parts added exactly.  16-bit inputs are
    split into a high and a low byte (``x = 256*hi + lo``), each convolved exactly.  A bias that
    float32 holds exactly is added by the convolution itself.  The result is an integer array.
    """
    from onnx import TensorProto, helper, numpy_helper

    cout, cin_g, kh, kw = w.shape
    group, k_chunk, zp = attrs["group"], attrs["k_chunk"], attrs["x_zp"]
    split = bool(attrs.get("split_bytes"))
    conv_attrs = {"pads": attrs["pads"], "strides": attrs["strides"], "dilations": attrs["dilations"],
                  "group": group, "kernel_shape": [kh, kw]}
    wf = w.astype(np.float32)
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Cast", ["q"], ["xc" if zp else "x"], to=TensorProto.FLOAT)]
    if zp:
        inits.append(numpy_helper.from_array(np.array(float(zp), np.float32), "zp"))
        nodes.append(helper.make_node("Sub", ["xc", "zp"], ["x"]))
    one_pass = cin_g * kh * kw <= k_chunk or group != 1
    if one_pass:
        inits.append(numpy_helper.from_array(wf, "w"))

    def emit(src: str, tag: str, with_bias: bool) -> str:
        """Exact sums of ``src`` as a float64 tensor name."""
        if one_pass:
            ins = [src, "w"] + (["b"] if with_bias else [])
            nodes.append(helper.make_node("Conv", ins, [f"{tag}c"], **conv_attrs))
            nodes.append(helper.make_node("Cast", [f"{tag}c"], [f"{tag}d"], to=TensorProto.DOUBLE))
            return f"{tag}d"
        step = max(1, k_chunk // (kh * kw))
        parts = []
        for k, c0 in enumerate(range(0, cin_g, step)):
            c1 = min(cin_g, c0 + step)
            if tag == "m":
                inits.extend([numpy_helper.from_array(np.ascontiguousarray(wf[:, c0:c1]), f"w{k}"),
                              numpy_helper.from_array(np.array([c0], np.int64), f"s{k}"),
                              numpy_helper.from_array(np.array([c1], np.int64), f"e{k}")])
            nodes.extend([helper.make_node("Slice", [src, f"s{k}", f"e{k}", "axis1"], [f"{tag}x{k}"]),
                          helper.make_node("Conv", [f"{tag}x{k}", f"w{k}"], [f"{tag}c{k}"], **conv_attrs),
                          helper.make_node("Cast", [f"{tag}c{k}"], [f"{tag}d{k}"], to=TensorProto.DOUBLE)])
            parts.append(f"{tag}d{k}")
        if with_bias:
            parts.append("bd")
        nodes.append(helper.make_node("Sum", parts, [f"{tag}sum"]))
        return f"{tag}sum"

    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
        inits.append(numpy_helper.from_array(bias.astype(np.float64).reshape(1, cout, 1, 1), "bd"))
    if split:
        # weights of the chunked form are registered once, under tag "m"
        inits.append(numpy_helper.from_array(np.array(256.0, np.float32), "k256"))
        inits.append(numpy_helper.from_array(np.array(256.0, np.float64), "k256d"))
        nodes += [helper.make_node("Div", ["x", "k256"], ["xs"]),
                  helper.make_node("Floor", ["xs"], ["hi"]),
                  helper.make_node("Mul", ["hi", "k256"], ["hi256"]),
                  helper.make_node("Sub", ["x", "hi256"], ["lo"])]
        hi = emit("hi", "m", False)
        lo = emit("lo", "l", bias is not None)
        nodes += [helper.make_node("Mul", [hi, "k256d"], ["hi_acc"]),
                  helper.make_node("Add", ["hi_acc", lo], ["acc"])]
        out_type = TensorProto.INT64
    else:
        nodes.append(helper.make_node("Identity", [emit("x", "m", bias is not None)], ["acc"]))
        out_type = TensorProto.INT32
    nodes.append(helper.make_node("Cast", ["acc"], ["y"], to=out_type))
    x_type = helper.np_dtype_to_tensor_dtype(np.dtype(in_dtype))
    graph = helper.make_graph(nodes, "conv_acc", [helper.make_tensor_value_info("q", x_type, attrs["in_shape"])],
                              [helper.make_tensor_value_info("y", out_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = open_session(model, threads=1)

    def run(q: np.ndarray) -> np.ndarray:
        return session.run(None, {"q": q})[0]

    return run


def prepare_conv(attrs: dict, blobs: dict) -> Kernel:
    w = blobs["w"]
    cout = w.shape[0]
    bias = blobs["b"].astype(np.int64)
    lshift = per_channel(attrs["lshift"], 1, 4)
    shifted = not isinstance(lshift, int) or lshift != 0
    fold = not shifted and bool(np.all(np.abs(bias) < (1 << 24)))
    late_bias = None if fold or not np.any(bias) else bias.reshape(1, cout, 1, 1)
    epilogue = make_epilogue(attrs["epilogue"], 1, 4)
    accumulate = _conv_accumulator(w, bias if fold and np.any(bias) else None, attrs, attrs["in_dtype"])
    in_shape, out_shape = attrs["in_shape"], attrs["out_shape"]  # a 1-D conv runs as 2-D with H = 1

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        acc = accumulate(inputs[0].reshape(in_shape))
        if shifted:
            acc = acc.astype(np.int64) << lshift
        if late_bias is not None:
            acc = acc + late_bias
        return [epilogue(acc).reshape(out_shape)]

    return run


def prepare_conv_transpose(attrs: dict, blobs: dict) -> Kernel:
    w = blobs["w"]
    cin, cout_g, kh, kw = w.shape
    group = attrs["group"]
    cout = cout_g * group
    cin_g = cin // group
    strides, dil, pads = attrs["strides"], attrs["dilations"], attrs["pads"]
    ys = attrs["out_shape"]
    zp, k_chunk = attrs["x_zp"], attrs["k_chunk"]
    ftype = np.float64 if attrs.get("wide") else np.float32  # float64 sums 16-bit products exactly
    if attrs.get("wide"):
        k_chunk = 1 << 30
    bias = blobs["b"].astype(np.int64).reshape(1, cout, 1, 1)
    lshift = per_channel(attrs["lshift"], 1, 4)
    epilogue = make_epilogue(attrs["epilogue"], 1, 4)
    wt = [np.ascontiguousarray(w[g * cin_g:(g + 1) * cin_g].reshape(cin_g, -1).T.astype(ftype))
          for g in range(group)]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        n, _, h, wd = x.shape
        xf = x.astype(ftype)
        if zp:
            xf -= np.float32(zp)
        full_h = max((h - 1) * strides[0] + (kh - 1) * dil[0] + 1, pads[0] + ys[2])
        full_w = max((wd - 1) * strides[1] + (kw - 1) * dil[1] + 1, pads[1] + ys[3])
        out = np.zeros((n, cout, full_h, full_w), np.float64)
        for g in range(group):
            xg = xf[:, g * cin_g:(g + 1) * cin_g].reshape(n, cin_g, h * wd)
            cols = _chunked_matmul(wt[g], xg, k_chunk).reshape(n, cout_g, kh, kw, h, wd)
            for i in range(kh):
                for j in range(kw):
                    h0, w0 = i * dil[0], j * dil[1]
                    out[:, g * cout_g:(g + 1) * cout_g, h0:h0 + strides[0] * (h - 1) + 1:strides[0],
                        w0:w0 + strides[1] * (wd - 1) + 1:strides[1]] += cols[:, :, i, j]
        acc = out[:, :, pads[0]:pads[0] + ys[2], pads[1]:pads[1] + ys[3]].astype(np.int64)
        return [epilogue((acc << lshift) + bias)]

    return run


def prepare_matmul(attrs: dict, blobs: dict) -> Kernel:
    wide = bool(attrs.get("wide"))  # 16-bit inputs: float64 sums are exact to 2^53
    ftype = np.float64 if wide else np.float32
    w = blobs["w"].astype(ftype)
    zp, k_chunk = attrs["x_zp"], (1 << 30) if wide else attrs["k_chunk"]
    ndim = len(attrs["out_shape"])
    bias = blobs["b"].astype(np.int64)
    lshift = per_channel(attrs["lshift"], ndim - 1, ndim)
    epilogue = make_epilogue(attrs["epilogue"], ndim - 1, ndim)

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        xf = inputs[0].astype(ftype)
        if zp:
            xf -= zp
        acc = _chunked_matmul(xf, w, k_chunk)
        return [epilogue((acc << lshift) + bias)]

    return run


def prepare_matmul2(attrs: dict, blobs: dict) -> Kernel:
    ndim = len(attrs["out_shape"])
    epilogue = make_epilogue(attrs["epilogue"], ndim - 1, ndim)
    za, zb = attrs["a_zp"], attrs["b_zp"]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        a = inputs[0].astype(np.float64) - za
        b = inputs[1].astype(np.float64) - zb
        return [epilogue(np.matmul(a, b).astype(np.int64))]

    return run


def _float_eltwise(attrs: dict, blobs: dict) -> Kernel:
    """Float-scale ``Add``/``Sub``/``Mul`` as ONNX Runtime runs the model: dequantize both operands
    to float32, combine in float32, fused chain and quantize step (``make_float_finish``)."""
    mode, ops, scales = attrs["mode"], attrs["operands"], attrs["dequant"]
    finish = make_float_finish(attrs["epilogue"])
    consts = {o["const"]: nm.dequantize(blobs[o["const"]], s, o["zp"]) for o, s in zip(ops, scales) if "const" in o}

    def operand(k: int, inputs: list[np.ndarray]) -> np.ndarray:
        spec = ops[k]
        return consts[spec["const"]] if "const" in spec else nm.dequantize(inputs[spec["input"]], scales[k], spec["zp"])

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        a, b = operand(0, inputs), operand(1, inputs)
        return [finish(a + b if mode == "add" else a - b if mode == "sub" else a * b)]

    return run


def _qlinear_add(attrs: dict, blobs: dict) -> Kernel:
    """Float-scale ``Add`` as ONNX Runtime's fused ``QLinearAdd`` computes it."""
    spec, ops = attrs["qlinear"], attrs["operands"]
    dt = np.dtype(spec["out_dtype"])
    bits, signed = dt.itemsize * 8, dt.kind == "i"
    (sa, sb), (za, zb), (a_scalar, b_scalar) = spec["scales"], spec["zps"], spec["scalar"]

    def operand(k: int, inputs: list[np.ndarray]) -> np.ndarray:
        return blobs[ops[k]["const"]] if "const" in ops[k] else inputs[ops[k]["input"]]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        c = nm.qlinear_add(operand(0, inputs), sa, za, operand(1, inputs), sb, zb, spec["out_scale"],
                           spec["out_zp"], a_scalar=a_scalar, b_scalar=b_scalar)
        return [nm.saturate(c, bits, signed)]

    return run


def prepare_eltwise(attrs: dict, blobs: dict) -> Kernel:
    if "qlinear" in attrs:
        return _qlinear_add(attrs, blobs)
    if "dequant" in attrs:
        return _float_eltwise(attrs, blobs)
    mode = attrs["mode"]
    align = attrs["align"]
    mults = attrs.get("scale_mult")  # files compiled before float-scale eltwise followed ORT
    ndim = len(attrs["out_shape"])
    epilogue = make_epilogue(attrs["epilogue"], 1 % ndim, ndim)
    consts = {k: v.astype(np.int64) for k, v in blobs.items()}
    # int32 is exact for 8-bit operands: |(a - za) << align| < 2^(9 + 20), products < 2^18
    narrow = mults is None and max(align) <= 20

    def operand(spec: dict, inputs, k: int, dtype) -> np.ndarray:
        v = consts[spec["const"]] if "const" in spec else inputs[spec["input"]]
        v = v.astype(dtype)
        if spec["zp"]:
            v -= spec["zp"]
        if mults is not None:
            return v * mults[k]
        if align[k]:
            v <<= align[k]
        return v

    ops = attrs["operands"]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        dtype = np.int32 if narrow and all(x.dtype.itemsize == 1 for x in inputs) else np.int64
        a, b = operand(ops[0], inputs, 0, dtype), operand(ops[1], inputs, 1, dtype)
        acc = a + b if mode == "add" else a - b if mode == "sub" else a * b
        return [epilogue(acc)]

    return run


def prepare_maxpool(attrs: dict, blobs: dict) -> Kernel:
    qmin = attrs["qmin"]
    lut = _maybe_lut(blobs, "table", qmin)
    ys = attrs["out_shape"]
    kernel, strides, dil, pads = attrs["kernel"], attrs["strides"], attrs["dilations"], attrs["pads"]
    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        if ys[2] == 1 and ys[3] == 1 and not any(pads) and list(x.shape[2:]) == list(kernel):
            y = x.max(axis=(2, 3), keepdims=True)
        else:
            xp = _pad_nchw(x, pads, qmin)
            y = None
            for _, _, view in _taps(xp, kernel, strides, dil, (ys[2], ys[3])):
                y = view.copy() if y is None else np.maximum(y, view, out=y)
        return [lut(y) if lut else y]

    return run


def _first(value) -> float:
    """A pooling epilogue's one accumulator scale: the value, or the first of a list or of a
    loaded file's array, as a Python float (a numpy scalar would widen float32 arithmetic)."""
    return float(np.asarray(value).reshape(-1)[0])


def _qlinear_global_avgpool(attrs: dict) -> Kernel:
    """ORT's ``QLinearGlobalAveragePool``: the exact integer sum of ``q - zp`` requantised by
    MLAS with the float32 multiplier ``x_scale / (y_scale * H*W)``."""
    ep = attrs["epilogue"]
    bits, signed = out_type(ep)
    x_scale = _first(ep["acc_scale"])

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        count = x.shape[2] * x.shape[3]
        acc = (x.astype(np.int64) - attrs["x_zp"]).sum(axis=(2, 3), keepdims=True)
        mult = np.float32(x_scale) / (np.float32(ep["scale"]) * np.float32(count))
        return [nm.saturate(nm.requantize_float(acc, mult, nm.ONNX_ROUND_MODE) + ep["zp"], bits, signed)]

    return run


def _qlinear_avgpool(attrs: dict, count_map: Callable) -> Kernel:
    """ORT's ``QLinearAveragePool``: dequantized values summed in float32 window row by window
    row, divided by the window count in float32, then :func:`numerics.quantize_pooled`."""
    ep = attrs["epilogue"]
    bits, signed = out_type(ep)
    x_scale = _first(ep["acc_scale"])
    ys, pads = attrs["out_shape"], attrs["pads"]
    kernel, strides, dil = attrs["kernel"], attrs["strides"], attrs["dilations"]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        xp = _pad_nchw(nm.dequantize(x, x_scale, attrs["x_zp"]), pads)
        s = None
        for _, _, view in _taps(xp, kernel, strides, dil, (ys[2], ys[3])):
            s = view.copy() if s is None else s + view
        v = s / count_map(*x.shape[2:])
        return [nm.quantize_pooled(v, ep["scale"], ep["zp"], bits, signed)]

    return run


def _count_maps(attrs: dict) -> Callable[[int, int], np.ndarray]:
    """Window element counts per output position (``count_include_pad`` and ceil-mode aware)."""
    ys, pads = attrs["out_shape"], attrs["pads"]
    kernel, strides, dil = attrs["kernel"], attrs["strides"], attrs["dilations"]
    real = attrs.get("real_pads", pads)
    include = attrs["count_include_pad"]
    counts: dict[tuple, np.ndarray] = {}

    def count_map(h: int, w: int) -> np.ndarray:
        key = (h, w)
        if key not in counts:
            ind = np.zeros((1, 1, h + pads[0] + pads[2], w + pads[1] + pads[3]), np.float32)
            if include:
                ind[:, :, :pads[0] + h + real[2], :pads[1] + w + real[3]] = 1
            else:
                ind[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = 1
            c = None
            for _, _, view in _taps(ind, kernel, strides, dil, (ys[2], ys[3])):
                c = view.copy() if c is None else c + view
            counts[key] = c.astype(np.float32)
        return counts[key]

    return count_map


def prepare_avgpool(attrs: dict, blobs: dict) -> Kernel:
    qlinear = attrs.get("qlinear")
    if qlinear == "global":
        return _qlinear_global_avgpool(attrs)
    count_map = _count_maps(attrs)
    if qlinear == "window":
        return _qlinear_avgpool(attrs, count_map)
    ys = attrs["out_shape"]
    kernel, strides, dil, pads = attrs["kernel"], attrs["strides"], attrs["dilations"], attrs["pads"]
    zp = attrs["x_zp"]
    ep = attrs["epilogue"]
    scale = np.float32(_first(ep["acc_scale"]))
    finish = make_float_finish(ep)

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        xi = x.astype(np.int64)
        if zp:
            xi -= zp
        h, w = x.shape[2:]
        if ys[2] == 1 and ys[3] == 1 and not any(pads) and [h, w] == list(kernel):
            s = xi.sum(axis=(2, 3), keepdims=True)
            cnt = np.float32(h * w)
        else:
            xp = _pad_nchw(xi, pads)
            s = None
            for _, _, view in _taps(xp, kernel, strides, dil, (ys[2], ys[3])):
                s = view.copy() if s is None else s + view
            cnt = count_map(h, w)
        v = (s.astype(np.float32) * scale) / cnt
        return [finish(v.astype(np.float32))]

    return run


def _passthrough(attrs: dict, blobs: dict, move: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    lut = _maybe_lut(blobs, "table", attrs["qmin"])

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        y = move(inputs[0])
        return [lut(y) if lut else np.ascontiguousarray(y)]

    return run


def prepare_reshape(attrs: dict, blobs: dict) -> Kernel:
    shape = attrs["out_shape"]
    return _passthrough(attrs, blobs, lambda x: x.reshape(shape))


def prepare_transpose(attrs: dict, blobs: dict) -> Kernel:
    perm = attrs["perm"]
    return _passthrough(attrs, blobs, lambda x: np.transpose(x, perm))


def prepare_shuffle(attrs: dict, blobs: dict) -> Kernel:
    """DepthToSpace / SpaceToDepth: reshape into blocks, transpose, reshape."""
    view, perm, shape = attrs["view"], attrs["perm"], attrs["out_shape"]
    return _passthrough(attrs, blobs, lambda x: x.reshape(view).transpose(perm).reshape(shape))


def prepare_slice(attrs: dict, blobs: dict) -> Kernel:
    index = tuple(slice(a, b, c) for a, b, c in attrs["slices"])
    return _passthrough(attrs, blobs, lambda x: x[index])


def prepare_gather(attrs: dict, blobs: dict) -> Kernel:
    idx = [None if list(ix) == list(range(len(ix))) else np.asarray(ix, np.intp) for ix in attrs["indices"]]

    def move(x: np.ndarray) -> np.ndarray:
        for axis, ix in enumerate(idx):
            if ix is not None:
                x = np.take(x, ix, axis=axis)
        return x

    return _passthrough(attrs, blobs, move)


def prepare_pad(attrs: dict, blobs: dict) -> Kernel:
    lut = _maybe_lut(blobs, "table", attrs["qmin"])
    width = [tuple(w) for w in attrs["width"]]
    mode, code = attrs["mode"], attrs["pad_code"]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = lut(inputs[0]) if lut else inputs[0]
        if mode == "constant":
            return [np.pad(x, width, constant_values=code)]
        return [np.pad(x, width, mode="reflect" if mode == "reflect" else "edge")]

    return run


def prepare_concat(attrs: dict, blobs: dict) -> Kernel:
    axis = attrs["axis"]
    parts = []
    for p in attrs["parts"]:
        lut = _lut(blobs[p["table"]], p["qmin"]) if "table" in p else None
        const = blobs[p["const"]] if "const" in p else None
        if const is not None and lut is not None:
            const, lut = lut(np.ascontiguousarray(const)), None
        parts.append((p.get("input"), const, lut))
    dtype = nm.storage_dtype(np.dtype(attrs["out_dtype"]).itemsize * 8, np.dtype(attrs["out_dtype"]).kind == "i")

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        arrays = []
        n = inputs[0].shape[0] if inputs else 1
        for idx, const, lut in parts:
            if const is not None:
                arrays.append(np.broadcast_to(const, (n, *const.shape[1:])))
            else:
                arrays.append(lut(inputs[idx]) if lut else inputs[idx])
        return [np.concatenate(arrays, axis=axis).astype(dtype, copy=False)]

    return run


def prepare_split(attrs: dict, blobs: dict) -> Kernel:
    axis, qmin = attrs["axis"], attrs["qmin"]
    luts = [_lut(blobs[t], qmin) if t else None for t in attrs["tables"]]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        outs = []
        for (a, b), lut in zip(attrs["parts"], luts):
            part = np.take(x, np.arange(a, b), axis=axis)
            outs.append(lut(part) if lut else part)
        return outs

    return run


def prepare_lut(attrs: dict, blobs: dict) -> Kernel:
    lut = _lut(blobs["table"], attrs["qmin"])
    return lambda inputs: [lut(inputs[0])]


def prepare_lut_channel(attrs: dict, blobs: dict) -> Kernel:
    """One code-to-code table per element of ``attrs["shape"]`` (a PReLU's slopes), broadcast
    over the input: ``y = table[k, x - qmin]`` with ``k`` the element of ``shape`` ``x`` sits at."""
    table = np.asarray(blobs["table"])
    flat = table.reshape(-1)
    offsets = (np.arange(table.shape[0], dtype=np.int64) * table.shape[1]).reshape(attrs["shape"])
    qmin = attrs["qmin"]
    return lambda inputs: [flat[inputs[0].astype(np.int64) - qmin + offsets]]


def prepare_select(attrs: dict, blobs: dict) -> Kernel:
    """``Max``/``Min`` of two tensors: each through its table onto the output grid, then
    ``numerics.select_codes`` (broadcast)."""
    luts = [_lut(blobs[f"t{k}"], qmin) for k, qmin in enumerate(attrs["qmins"])]
    mode = attrs["mode"]
    return lambda inputs: [nm.select_codes(luts[0](inputs[0]), luts[1](inputs[1]), mode)]


def prepare_softmax(attrs: dict, blobs: dict) -> Kernel:
    """``DQ -> Softmax -> Q`` on codes (``numerics_softmax.softmax_codes``)."""
    table, axes = np.asarray(blobs["table"]), tuple(attrs["axes"])  # float32: QLinearSoftmax
    return lambda inputs: [softmax_codes(inputs[0], axes, table, attrs["out_scale"], attrs["out_zp"],
                                            bits=attrs["bits"], signed=attrs["signed"])]


def prepare_quantize(attrs: dict, blobs: dict) -> Kernel:
    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [nm.quantize(inputs[0], attrs["scale"], attrs["zp"], bits=attrs["bits"], signed=attrs["signed"],
                            round_mode=attrs["round"])]

    return run


def prepare_dequantize(attrs: dict, blobs: dict) -> Kernel:
    scale = np.asarray(attrs["scale"], np.float32)
    zp = np.asarray(attrs["zp"])

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [nm.dequantize(inputs[0], scale, zp, axis=attrs["axis"])]

    return run


KERNELS: dict[str, Callable[[dict, dict], Kernel]] = {
    "conv": prepare_conv,
    "conv_transpose": prepare_conv_transpose,
    "matmul": prepare_matmul,
    "matmul2": prepare_matmul2,
    "eltwise": prepare_eltwise,
    "maxpool": prepare_maxpool,
    "avgpool": prepare_avgpool,
    "reshape": prepare_reshape,
    "transpose": prepare_transpose,
    "shuffle": prepare_shuffle,
    "slice": prepare_slice,
    "gather": prepare_gather,
    "pad": prepare_pad,
    "concat": prepare_concat,
    "split": prepare_split,
    "lut": prepare_lut,
    "lut_channel": prepare_lut_channel,
    "select": prepare_select,
    "softmax": prepare_softmax,
    "quantize": prepare_quantize,
    "dequantize": prepare_dequantize,
}
