"""Layer-by-layer accuracy of a quantized or compiled model against its float model, and of one
dump folder against another (rknn-toolkit2's ``accuracy_analysis``, Vitis AI's ``xdputil comp_float``).

Every tensor that exists in both models (matched by name) is compared on the same samples, two ways:

* **accumulated**: the quantized model runs from the input, so a layer's error includes every
  error carried in from the layers before it (what the deployed model shows);
* **single**: each quantized layer is fed the float model's own values of its inputs, so the
  error is that layer's own.  For a QDQ model, every activation quantize step reads the float
  model's value of its tensor (ONNX Runtime runs the rewired model); for a ``.npuf``, each
  accelerator op runs alone (:meth:`npuflow.Session.run_op`) on the float values quantized with
  the compiled tensors' own parameters.

Both report the cosine similarity and the relative Euclidean error ``||q - f|| / ||f||``,
pooled over the samples (sums of products, so a sample whose tensor is all near zero weighs
nothing; two all-zero tensors are equal).  A quantized model's tensor ``t`` is compared where it
is quantized: the dequantize step after the quantize step reading ``t``.  A ``.npuf``'s integer
tensors (its dump, named as in ``quantized_model.onnx``) are dequantized with the manifest's
scales and matched to the float tensor their quantize step read (named ``t`` + a quantizer's
suffix); a ``.npuf`` of several shape sets runs each sample on the program ``npuflow run`` picks for
it.  The layer whose accumulated error rises most above its inputs' is where the error
*jumps*: the first place to look.

:func:`npuflow.analyze.dumps.compare_dumps` compares two ``Session.run(..., dump_dir=)`` folders tensor
by tensor.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from .. import model as model_io
from .. import numerics as nm
from ..compiler import CompiledModel
from ..errors import NpuflowError
from ..graph import GraphView, rename_outer_reads
from ..quant.algorithms.capture import session
from ..quant.calibrate import run_sample
from ..quant.data import CalibrationSource, InputSpec
from ..quant.output_kinds import is_signal, snr_db
from .. import qdq
from .saturation import StepSaturation, add_sample, counters, saturation_warning, worst
from ..value_info import inferred_dims

#: How quantizers name a quantize step's output after the float tensor it reads: npuflow's export
#: (``t_q``), ONNX Runtime's ``quantize_static`` (``t_QuantizeLinear_Output``).
QUANTIZE_SUFFIXES = ("_q", "_QuantizeLinear_Output")
#: Suffix of the graph inputs and tensors added to the rewired (single-layer) QDQ model.
_REF = "__npuflow_ref"
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


# --- the quantize steps of a QDQ model ------------------------------------------------------

@dataclass
class QuantPoint:
    """An activation quantize/dequantize pair: the Q node and the DQ node after it."""

    q: onnx.NodeProto
    dq: onnx.NodeProto


def activation_points(model: onnx.ModelProto) -> list[QuantPoint]:
    """Every ``Q -> DQ`` pair on an activation tensor of a QDQ model.

    Read from the model itself, not from the quantizer's plan: compare takes any QDQ model
    (ONNX Runtime's ``quantize_static`` output, a model edited by hand), and what runs is what
    the model holds.  A quantize step is ``QuantizeLinear`` or an ``ai.npuflow`` rounding
    function (docs/quantized-model-format.md)."""
    view = GraphView(model)
    inits = {t.name for t in model.graph.initializer}
    points = []
    for n in model.graph.node:
        quantize = n.op_type == "QuantizeLinear" or (n.domain == qdq.DOMAIN and qdq.parse_function_name(n.op_type) is not None)
        if quantize and n.input[0] not in inits:
            points += [QuantPoint(n, u) for u in view.consumer_nodes(n.output[0]) if u.op_type == "DequantizeLinear"]
    return points


# --- the statistic ---------------------------------------------------------------------------

@dataclass
class Pooled:
    """Cosine similarity and relative Euclidean error of ``got`` to ``ref``, pooled over samples."""

    dot: float = 0.0
    ref_sq: float = 0.0
    got_sq: float = 0.0
    diff_sq: float = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        """Add one pair.  Positions where both hold the same infinity agree and are left out: an
        attention mask's ``-inf`` (torch's ``src_key_padding_mask``) read as NaN cosines, a numpy
        RuntimeWarning and NaN in compare.json on every masked tensor (round 23b); any other
        non-finite value stays in, so a disagreement still reads as one."""
        a = np.asarray(ref, np.float64).ravel()
        b = np.asarray(got, np.float64).ravel()
        with np.errstate(invalid="ignore", over="ignore"):
            sums = _sums(a, b)
            if not all(math.isfinite(v) for v in sums):
                keep = np.isfinite(a) | (a != b)
                sums = _sums(a[keep], b[keep])
        self.dot += sums[0]
        self.ref_sq += sums[1]
        self.got_sq += sums[2]
        self.diff_sq += sums[3]

    @property
    def cosine(self) -> float:
        if self.ref_sq == 0.0 or self.got_sq == 0.0:
            return float(self.ref_sq == self.got_sq)
        return self.dot / math.sqrt(self.ref_sq * self.got_sq)

    @property
    def rel_error(self) -> float:
        if self.ref_sq == 0.0:
            return 0.0 if self.diff_sq == 0.0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)


def _sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """``a . b``, ``a . a``, ``b . b`` and ``|b - a|^2`` of two flat float64 arrays."""
    d = b - a
    return float(a @ b), float(a @ a), float(b @ b), float(d @ d)


def similarity(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """``(cosine, relative Euclidean error)`` of ``got`` to ``ref`` (one pair of tensors)."""
    p = Pooled()
    p.add(ref, got)
    return p.cosine, p.rel_error


# --- the result --------------------------------------------------------------------------------

@dataclass
class LayerError:
    """One tensor in both models: its float node and the errors of its quantized value."""

    tensor: str
    node: str
    op_type: str
    compared: str  # the tensor of the quantized model (or .npuf) compared with it
    cosine: float
    rel_error: float
    single_cosine: float | None = None  # None: not measurable alone (a CPU subgraph of a .npuf)
    single_rel_error: float | None = None
    #: accumulated relative error minus the largest of its inputs' (how much this layer adds)
    increase: float = 0.0
    jump: bool = False


@dataclass
class CompareResult:
    float_model: str
    quantized_model: str
    kind: str  # "qdq" or "npuf"
    samples: int
    layers: list[LayerError] = field(default_factory=list)  # in the float model's node order
    #: tensors of the quantized model with no float counterpart (not compared)
    unmatched: list[str] = field(default_factory=list)
    #: per signal output of the float model (``quant.output_kinds.is_signal``: a waveform), its
    #: signal-to-noise ratio in dB (None: no error), from the pooled relative error as quantize reports it
    signal_snr_db: dict[str, float | None] = field(default_factory=dict)
    #: ``.npuf`` only: per quantized float input whose values the samples pushed past its quantize step's
    #: range (:meth:`npuflow.runtime.Session.input_coverage`): samples wider than the calibration set
    saturated_inputs: list = field(default_factory=list)
    #: per quantize step, the samples' float values past its range (:mod:`.saturation`: interior clipping)
    saturation: list[StepSaturation] = field(default_factory=list)

    def saturation_warning(self) -> NpuflowError | None:
        """``NPF_COMPARE_SATURATED`` when a quantize step clips more than a small fraction of the samples' values."""
        return saturation_warning(self.saturation, self.samples)

    @property
    def jump(self) -> LayerError | None:
        return next((r for r in self.layers if r.jump), None)

    def worst(self, count: int) -> list[LayerError]:
        """The ``count`` layers with the largest own error (single; accumulated where unmeasured)."""
        def own(r: LayerError) -> float:
            return r.single_rel_error if r.single_rel_error is not None else r.rel_error
        return sorted(self.layers, key=lambda r: (-own(r), r.tensor))[:count]

    def to_json(self) -> dict:
        jump = self.jump
        return {"float_model": self.float_model, "quantized_model": self.quantized_model, "kind": self.kind,
                "samples": self.samples, "jump": jump.tensor if jump else None, "unmatched": self.unmatched,
                "signal_snr_db": self.signal_snr_db, "saturated_inputs": [vars(c) for c in self.saturated_inputs],
                "saturation": [s.to_json() for s in worst(self.saturation, len(self.saturation))],
                "layers": [asdict(r) for r in self.layers]}

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``compare.json``, ``compare.csv`` and ``compare.html`` (an inline SVG plot)."""
        out = Path(out_dir)
        files = {"json": out / "compare.json", "csv": out / "compare.csv", "html": out / "compare.html"}
        model_io.write_atomic(files["json"], json.dumps(self.to_json(), indent=1, allow_nan=True) + "\n")
        model_io.write_atomic(files["csv"], self._csv())
        model_io.write_atomic(files["html"], render_html(self))
        return files

    def _csv(self) -> str:
        buf = io.StringIO()
        names = [f.name for f in LayerError.__dataclass_fields__.values()]
        writer = csv.DictWriter(buf, fieldnames=["index", *names], lineterminator="\n")
        writer.writeheader()
        for k, r in enumerate(self.layers):
            writer.writerow({"index": k, **asdict(r)})
        return buf.getvalue()


# --- data ------------------------------------------------------------------------------------

def input_specs(float_model: onnx.ModelProto) -> list[InputSpec]:
    """What each sample must be: the float model's inputs (dynamic dimensions take any size)."""
    specs = []
    for inp in model_io.graph_inputs(float_model):
        tt = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, model_io.numpy_dtype(inp), dims))
    return specs


def open_samples(data: Any, float_model: onnx.ModelProto, samples: int | None = None,
                 frozen: Mapping[str, list[int]] | None = None) -> CalibrationSource:
    """The samples to compare on, read and checked as ``npuflow quantize --calib`` reads them.

    ``data``: what :class:`CalibrationSource` takes (a folder of ``.npy`` files, per-input
    sub-folders, ``.npz`` archives, arrays, dicts, one ``.npy``/``.npz`` of stacked samples -- a
    single sample being a stack of one -- or a ``dataset.txt`` list).  Raw ``numpy.tofile`` files
    (Horizon's calibration format) are read with the model inputs' static shapes and dtype.
    ``frozen``: the shapes a ``.npuf`` was compiled at, which a sample must have; without them a
    ``.npz`` holding one batch of 2 for a model compiled at batch 2 was split into two samples of
    batch 1 (the float model's batch is dynamic), which the ``.npuf`` refused.
    """
    frozen = frozen or {}
    specs = [InputSpec(s.name, s.dtype, tuple(d if isinstance(d, int) and d > 0 else None for d in frozen[s.name])
                       if s.name in frozen else s.dims) for s in input_specs(float_model)]
    shapes = {s.name: list(s.dims) for s in specs if None not in s.dims}
    dtypes = {s.dtype for s in specs}
    return CalibrationSource(data, specs, shapes=shapes, dtype=str(dtypes.pop()) if len(dtypes) == 1 else "float32",
                             limit=samples)


# --- matching --------------------------------------------------------------------------------

def _node_outputs(model: onnx.ModelProto) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o]


def _tensors(model: onnx.ModelProto) -> list[str]:
    """Graph inputs, then node outputs in node order."""
    return [i.name for i in model_io.graph_inputs(model)] + _node_outputs(model)


def _float_tensors(model: onnx.ModelProto) -> list[str]:
    """The float model's inputs and node outputs that hold real numbers (not shapes or indices)."""
    types = model_io.tensor_elem_types(onnx.shape_inference.infer_shapes(model))
    return [t for t in _tensors(model) if types.get(t, onnx.TensorProto.FLOAT) in _FLOAT_TYPES]


def qdq_pairs(float_model: onnx.ModelProto, qmodel: onnx.ModelProto) -> dict[str, str]:
    """Float tensor -> the quantized model's tensor to compare with it: the dequantized value
    where the quantized model quantizes the tensor, else the tensor of the same name."""
    floats = _float_tensors(float_model)
    have = set(floats)
    pairs: dict[str, str] = {}
    for p in activation_points(qmodel):
        if p.q.input[0] in have:
            pairs.setdefault(p.q.input[0], p.dq.output[0])
    qnames = set(_node_outputs(qmodel))
    for t in floats:
        if t not in pairs and t in qnames:
            pairs[t] = t
    return pairs


def float_name(name: str, floats: set[str]) -> str | None:
    """The float tensor a compiled tensor stands for: the same name, or the tensor its quantize
    step read (the name without a quantizer's suffix)."""
    if name in floats:
        return name
    for suffix in QUANTIZE_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in floats:
            return name[: -len(suffix)]
    return None


# --- running -----------------------------------------------------------------------------------

def _feed(sess, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in sample.items() if k in names}


def single_layer_model(qmodel: onnx.ModelProto, sources: Mapping[str, str]) -> onnx.ModelProto:
    """``qmodel`` with every activation quantize step fed the float model's value of its tensor.

    ``sources``: quantize step's input tensor -> float model tensor holding its float value.
    Each pair ``Q(x) -> DQ -> y`` keeps computing ``y`` from the model's own ``x`` (so ``y`` is
    the layer's output fed float inputs), and a copy ``Q(x_ref) -> DQ -> y_ref`` on a new graph
    input ``x_ref`` feeds every reader of ``y``: each layer sees the float model's values,
    quantized as the model quantizes them.
    """
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    types = model_io.tensor_elem_types(m)
    added: set[str] = set()
    renames: dict[str, str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}  # y -> its copied pair, placed right after the DQ making y
    for p in activation_points(m):
        x, y = p.q.input[0], p.dq.output[0]
        if x not in sources:
            continue
        if x not in added:
            m.graph.input.append(onnx.helper.make_tensor_value_info(x + _REF, types.get(x, onnx.TensorProto.FLOAT), None))
            added.add(x)
        q, dq = onnx.NodeProto(), onnx.NodeProto()
        q.CopyFrom(p.q)
        dq.CopyFrom(p.dq)
        q.name, dq.name = p.q.name + _REF, p.dq.name + _REF
        q.input[0], q.output[0] = x + _REF, y + _REF + "_q"
        dq.input[0], dq.output[0] = q.output[0], y + _REF
        after[y] = [q, dq]
        renames[y] = y + _REF
    nodes = []
    for node in m.graph.node:
        for k, t in enumerate(node.input):
            if t in renames:
                node.input[k] = renames[t]
        rename_outer_reads(node, renames)
        nodes.append(node)
        nodes += [c for o in node.output for c in after.get(o, [])]
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del m.graph.node[:]
    m.graph.node.extend(copies)
    return m


def _compare_qdq(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, pairs: Mapping[str, str],
                 samples: CalibrationSource) -> tuple[dict[str, Pooled], dict[str, Pooled], int, list[StepSaturation]]:
    by_q = {q: t for t, q in pairs.items()}
    floats = set(_float_tensors(float_model))
    sources = {}
    for p in activation_points(qmodel):
        x = p.q.input[0]
        src = x if x in floats else by_q.get(p.dq.output[0])
        if src is not None:
            sources[x] = src
    view = GraphView(qmodel)
    steps = {}
    for p in activation_points(qmodel):
        src = sources.get(p.q.input[0])
        scale = view.const(p.q.input[1]) if p.q.op_type == "QuantizeLinear" else None
        zp = view.const(p.q.input[2]) if scale is not None and len(p.q.input) > 2 and p.q.input[2] else None
        if src is not None and scale is not None and zp is not None:
            steps[src] = (p.dq.output[0], {"scale": scale, "zero_point": zp, "dtype": str(zp.dtype), "axis": None})
    sat = counters(steps)
    wanted = sorted(set(pairs) | set(sources.values()))
    fsess = session(float_model, wanted)
    qsess = session(qmodel, sorted(set(pairs.values())))
    ssess = session(single_layer_model(qmodel, sources), sorted(set(pairs.values())))
    acc = {t: Pooled() for t in pairs}
    single = {t: Pooled() for t in pairs}
    count = 0
    for i, sample in enumerate(samples):
        fv = run_sample(fsess, _feed(fsess, sample), samples.label(i))
        qv = run_sample(qsess, _feed(qsess, sample), samples.label(i))
        refs = {x + _REF: fv[src] for x, src in sources.items()}
        sv = run_sample(ssess, {**_feed(ssess, sample), **refs}, samples.label(i))
        add_sample(sat, fv)
        for t, q in pairs.items():
            _add(acc[t], fv[t], qv[q])
            _add(single[t], fv[t], sv[q])
        count += 1
    return acc, single, count, list(sat.values())


def _add(stat: Pooled, ref: np.ndarray, got: np.ndarray) -> None:
    if ref.shape == got.shape:
        stat.add(ref, got)


def _dequantized(value: np.ndarray, info: Mapping) -> np.ndarray:
    q = info.get("quant")
    if not q or value.dtype.kind not in "iu":
        return value
    return nm.dequantize(value, np.asarray(q["scale"]), np.asarray(q["zero_point"]), axis=q.get("axis"))


def _quantized(value: np.ndarray, info: Mapping) -> np.ndarray:
    """A float value as the integer tensor ``info`` describes (its scale, zero point, tie rule)."""
    q = info.get("quant")
    dtype = np.dtype(info["dtype"])
    if not q or dtype.kind not in "iu":
        return value.astype(dtype)
    return nm.quantize(value, np.asarray(q["scale"]), np.asarray(q["zero_point"]), bits=dtype.itemsize * 8,
                       signed=dtype.kind == "i", round_mode=q["round_mode"], axis=q.get("axis"))


def _integer_ops(compiled: CompiledModel) -> list[dict]:
    return [op for sg in compiled.manifest["subgraphs"] if sg["engine"] == "integer" for op in sg["ops"]]


def npuf_pairs(float_model: onnx.ModelProto, compiled: CompiledModel) -> tuple[dict[str, str], dict[str, str | None]]:
    """Float tensor -> the compiled tensor to compare with it (the same name first: a float output;
    else its quantized form), and every compiled tensor's float counterpart (None: none)."""
    tensors = compiled.manifest["tensors"]
    floats = set(_float_tensors(float_model))
    names = {n: float_name(n, floats) for n in tensors}
    pairs: dict[str, str] = {}
    for n in sorted(tensors, key=lambda n: (names[n] != n, n)):
        if names[n] is not None and (n == names[n] or tensors[n].get("quant")):
            pairs.setdefault(names[n], n)
    return pairs, names


def _single_of(ops: list[dict], pairs: Mapping[str, str], names: Mapping[str, str | None]) -> dict[str, str]:
    """Float tensor -> the compiled tensor measured alone: the op that computes it (not a later
    dequantize op of the same value)."""
    single_of: dict[str, str] = {}
    for n in (o for op in ops for o in op["outputs"]):
        if names.get(n) in pairs:
            single_of.setdefault(names[n], n)
    return single_of


def _compare_npuf(float_model: onnx.ModelProto, compiled: CompiledModel, pairs: Mapping[str, str],
                  names: Mapping[str, str | None], samples: CalibrationSource
                  ) -> tuple[dict[str, Pooled], dict[str, Pooled], int, list, list[StepSaturation]]:
    """Each sample runs on the program ``npuflow run`` picks for it (:meth:`Session.select`, its
    refusals included), padded as ``run`` pads it; the float model is fed the same padded values,
    so that both compute tensors of one shape from one input.  Last: the inputs the samples
    saturated (:meth:`Session.input_coverage`), which the result reports instead of the session's warning."""
    from ..runtime import Session
    from ..runtime.coverage import InputSaturationWarning
    from ..runtime.session import padded

    sess = Session(compiled)
    #: per program run so far: its session (``run_op`` reaches the first program's ops only), its
    #: tensors, integer ops and the ops measured alone
    programs: dict[int, tuple[Session, dict, list[dict], dict[str, str]]] = {}
    wanted = sorted(set(pairs) | {names[t] for op in _integer_ops(compiled) for t in op["inputs"] if names[t]})
    fsess = session(float_model, wanted)
    acc = {t: Pooled() for t in pairs}
    single: dict[str, Pooled] = {}
    tensors0 = compiled.manifest["tensors"]
    sat = counters({t: (n, tensors0[n]["quant"]) for t, n in pairs.items() if tensors0[n].get("quant")})
    count = 0
    for i, sample in enumerate(samples):
        k = sess.select({t.name: np.shape(sample[t.name]) for t in sess.get_inputs()})
        if k not in programs:
            view = compiled.program(k)
            ops = _integer_ops(view)
            programs[k] = (sess if k == 0 else Session(view), view.manifest["tensors"], ops, _single_of(ops, pairs, names))
        run, tensors, ops, single_of = programs[k]
        shapes = compiled.input_shapes[k]
        sample = {n: padded(a, shapes[n]) if n in shapes else a for n, a in sample.items()}
        fv = run_sample(fsess, _feed(fsess, sample), samples.label(i))
        add_sample(sat, fv)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore", InputSaturationWarning)
            outs = run.run(sample, dump_dir=d)
            index = json.loads((Path(d) / "index.json").read_text())
            got = {n: np.load(Path(d) / f) for n, f in index.items()}
        got.update(outs)
        for t, n in pairs.items():
            if n in got:
                _add(acc[t], fv[t], _dequantized(got[n], tensors[n]))
        for op in ops:
            if not all(names.get(t) in fv for t in op["inputs"]):
                continue
            res = run.run_op(op["name"], {t: _quantized(fv[names[t]], tensors[t]) for t in op["inputs"]})
            for n, value in res.items():
                t = names.get(n)
                if single_of.get(t) == n:
                    _add(single.setdefault(t, Pooled()), fv[t], _dequantized(value, tensors[n]))
        count += 1
    saturated = [c for s in {id(p[0]): p[0] for p in programs.values()}.values() for c in s.input_coverage() if c.outside]
    return acc, single, count, saturated, list(sat.values())


def compare(float_model: str | os.PathLike | onnx.ModelProto, quantized: str | os.PathLike | onnx.ModelProto | CompiledModel,
            data: Any, *, samples: int | None = None) -> CompareResult:
    """Compare a quantized QDQ model or a compiled ``.npuf`` with ``float_model`` layer by layer.

    ``data``: the samples (see :func:`open_samples`); ``samples``: use at most this many.
    """
    fmodel = float_model if isinstance(float_model, onnx.ModelProto) else model_io.read_proto(float_model)
    qname = str(quantized) if isinstance(quantized, str | os.PathLike) else type(quantized).__name__
    fname = str(float_model) if isinstance(float_model, str | os.PathLike) else fmodel.graph.name
    if isinstance(quantized, CompiledModel) or (isinstance(quantized, str | os.PathLike)
                                               and Path(quantized).suffix == ".npuf"):
        compiled = quantized if isinstance(quantized, CompiledModel) else CompiledModel.load(quantized)
        frozen = _frozen_dims(compiled)
        _require_same_inputs(fmodel, frozen, qname, fname)
        source = open_samples(data, fmodel, samples, frozen)
        pairs, names = npuf_pairs(fmodel, compiled)
        tensors = compiled.manifest["tensors"]
        unmatched = sorted(n for n in tensors if names[n] is None and tensors[n].get("quant"))
        _require(pairs, qname, fname)
        acc, single, count, saturated, clipped = _compare_npuf(fmodel, compiled, pairs, names, source)
        kind = "npuf"
    else:
        qmodel = quantized if isinstance(quantized, onnx.ModelProto) else model_io.read_proto(quantized)
        _require_same_inputs(fmodel, {s.name: list(s.dims) for s in input_specs(qmodel)}, qname, fname)
        source = open_samples(data, fmodel, samples)
        pairs = qdq_pairs(fmodel, qmodel)
        unmatched = sorted(p.dq.output[0] for p in activation_points(qmodel) if p.dq.output[0] not in set(pairs.values()))
        _require(pairs, qname, fname)
        acc, single, count, clipped = _compare_qdq(fmodel, qmodel, pairs, source)
        kind, saturated = "qdq", []
    result = CompareResult(fname, qname, kind, count, unmatched=unmatched, saturated_inputs=saturated,
                           saturation=clipped)
    result.layers = _rows(fmodel, pairs, acc, single)
    dims, rows = inferred_dims(fmodel), {r.tensor: r for r in result.layers}
    result.signal_snr_db = {o.name: snr_db(1.0, rows[o.name].rel_error ** 2) for o in fmodel.graph.output
                            if o.name in rows and is_signal(dims.get(o.name, ()))}
    return result


def _frozen_dims(compiled: CompiledModel) -> dict[str, list[int | None]]:
    """Per input, the dimensions every compiled shape set shares (None: one that differs between
    them, which selects the program a sample runs on, as in ``npuflow run``)."""
    pre = compiled.manifest.get("preprocessing") or {}
    sets = [{n: list((pre.get(n) or {}).get("shape", shape)) for n, shape in shapes.items()}
            for shapes in compiled.input_shapes]
    return {n: [d if all(len(s[n]) == len(dims) and s[n][k] == d for s in sets) else None for k, d in enumerate(dims)]
            for n, dims in sets[0].items()}


def _require_same_inputs(fmodel: onnx.ModelProto, inputs: Mapping[str, list[int | None]], quantized: str,
                         float_model: str) -> None:
    """Refuse a quantized or compiled model whose inputs are not the float model's: other names,
    or another number of elements where both are static (an input transpose a ``modify`` removed
    keeps the count).

    Why: layers are matched by tensor name, and exporters reuse names (``/conv/Conv_output_0``)
    across models, so the wrong float model was reported as the samples not fitting it, or as
    an ONNX Runtime shape error from the quantized model.
    """
    def count(dims: Iterable[int | None]) -> int | None:
        dims = list(dims)
        return None if any(d is None for d in dims) else int(np.prod(dims, dtype=np.int64))

    def text(dims: Iterable[int | None]) -> str:
        return "x".join("?" if d is None else str(d) for d in dims)

    floats = {s.name: list(s.dims) for s in input_specs(fmodel)}
    differ = set(floats) != set(inputs) or any(
        None not in (count(floats[n]), count(inputs[n])) and count(floats[n]) != count(inputs[n]) for n in floats)
    if differ:
        raise NpuflowError("NPF_COMPARE_INPUTS_DIFFER", quantized=quantized, float=float_model,
                           float_inputs=", ".join(f"{n} {text(d)}" for n, d in floats.items()),
                           inputs=", ".join(f"{n} {text(d)}" for n, d in inputs.items()))


def _require(pairs: Mapping[str, str], quantized: str, float_model: str) -> None:
    if not pairs:
        raise NpuflowError("NPF_COMPARE_NO_COMMON_TENSORS", quantized=quantized, float=float_model)


def _rows(fmodel: onnx.ModelProto, pairs: Mapping[str, str], acc: Mapping[str, Pooled],
          single: Mapping[str, Pooled]) -> list[LayerError]:
    view = GraphView(fmodel)
    rows: dict[str, LayerError] = {}
    for t in _tensors(fmodel):
        if t not in pairs or _empty(acc[t]):
            continue
        node, s = view.producer_node(t), single.get(t)
        measured = s is not None and not _empty(s)
        rows[t] = LayerError(t, node.name if node else "", node.op_type if node else "input", pairs[t],
                             acc[t].cosine, acc[t].rel_error, s.cosine if measured else None,
                             s.rel_error if measured else None)
    for t, r in rows.items():
        before = [rows[i].rel_error for i in _row_inputs(view, t, rows)]
        r.increase = r.rel_error - max(before, default=0.0)
    finite = [r for r in rows.values() if math.isfinite(r.increase)]
    if finite:
        max(finite, key=lambda r: r.increase).jump = True
    return list(rows.values())


def _row_inputs(view: GraphView, tensor: str, rows: Mapping[str, LayerError]) -> set[str]:
    """The compared tensors nearest upstream of ``tensor`` (through tensors not compared)."""
    found: set[str] = set()
    seen: set[str] = set()
    made = view.producer_node(tensor)
    stack = [i for i in made.input if i] if made is not None else []
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in rows:
            found.add(t)
        elif (node := view.producer_node(t)) is not None:
            stack.extend(i for i in node.input if i)
    return found


def _empty(p: Pooled) -> bool:
    """Nothing was added (the tensor had another shape in the quantized model)."""
    return p == Pooled()


# --- the plot ----------------------------------------------------------------------------------

_W, _H, _PAD = 960, 320, 48


def _polyline(values: list[float | None], lo: float, hi: float, color: str, label: str, names: list[str]) -> str:
    n = max(len(values) - 1, 1)
    pts, dots = [], []
    for k, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        x = _PAD + (_W - 2 * _PAD) * k / n
        y = _H - _PAD - (_H - 2 * _PAD) * (v - lo) / ((hi - lo) or 1.0)
        pts.append(f"{x:.1f},{y:.1f}")
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>{html.escape(names[k])}: '
                    f'{label} {v:.6g}</title></circle>')
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(pts)}"/>' + "".join(dots)


def _chart(result: CompareResult, title: str, acc: list[float], single: list[float | None]) -> str:
    names = [r.tensor for r in result.layers]
    finite = [v for v in [*acc, *single] if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    jump = next((k for k, r in enumerate(result.layers) if r.jump), None)
    marks = ""
    if jump is not None:
        x = _PAD + (_W - 2 * _PAD) * jump / max(len(names) - 1, 1)
        marks = (f'<line x1="{x:.1f}" y1="{_PAD / 2}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="#d62728" '
                 f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{_PAD / 2 + 10}" font-size="11" fill="#d62728">'
                 f'jump: {html.escape(names[jump])}</text>')
    return (f'<h2>{html.escape(title)}</h2><svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
            f'font-family="sans-serif"><rect width="{_W}" height="{_H}" fill="white" stroke="#ccc"/>'
            f'<text x="4" y="{_PAD - 6}" font-size="11">{hi:.6g}</text>'
            f'<text x="4" y="{_H - _PAD}" font-size="11">{lo:.6g}</text>'
            f'<text x="{_W / 2}" y="{_H - 12}" font-size="11">layer (float model order)</text>'
            + _polyline(acc, lo, hi, "#1f77b4", "accumulated", names)
            + _polyline(single, lo, hi, "#ff7f0e", "single", names) + marks
            + f'<text x="{_W - 260}" y="16" font-size="11" fill="#1f77b4">accumulated</text>'
              f'<text x="{_W - 160}" y="16" font-size="11" fill="#ff7f0e">single</text></svg>')


def render_html(result: CompareResult) -> str:
    """A self-contained page: cosine and relative error per layer, accumulated and single."""
    rows = result.layers
    jump = result.jump
    head = (f"<p>{html.escape(result.quantized_model)} ({result.kind}) against {html.escape(result.float_model)}, "
            f"{result.samples} sample(s), {len(rows)} layers; the accumulated error jumps at "
            f"<b>{html.escape(jump.tensor) if jump else '-'}</b>.</p>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>npuflow compare</title></head><body>"
            "<h1>npuflow compare</h1>" + head
            + _chart(result, "cosine similarity", [r.cosine for r in rows], [r.single_cosine for r in rows])
            + _chart(result, "relative Euclidean error", [r.rel_error for r in rows],
                     [r.single_rel_error for r in rows])
            + "</body></html>\n")
