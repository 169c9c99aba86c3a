"""A fused run: one ONNX Runtime session of a run of an integer program's ops (:mod:`.fused`).

Split from :mod:`.fused`, which writes the runs' graphs and cuts a program into runs: a run's
session is opened either from the graph just written or from one an earlier load stored
(:mod:`.fused_cache`), and is run the same way.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..errors import NpuflowError
from ..ort_session import open_session
from . import fused_cache, fused_permute
from .broadcast import full_rank_constants
from .fused_graph import SMALL_RUN_BYTES, Graph, elem_type, input_name
from .halfup_steps import integer_quantize_steps

#: A run's ``produced`` tensors, or what reads them from its ops when first asked (a stored run:
#: a load whose plan is stored reads no op, ``compiler/lazy_ops.py``).
Produced = list[str] | Callable[[], list[str]]

#: What a fused graph ONNX Runtime refuses raises: NPF_MODEL_INVALID from open_session at creation,
#: ORT's own types from a run.
_ORT_ERRORS = (NpuflowError, ort.capi.onnxruntime_pybind11_state.Fail,
               ort.capi.onnxruntime_pybind11_state.InvalidGraph, ort.capi.onnxruntime_pybind11_state.NotImplemented)

#: The run options every frame's compiled run is called with (:func:`direct_run`).  ONNX Runtime's
#: compiled ``run`` given ``None`` builds default options of its own on each call, a path measured
#: at 1.8 µs per MNIST frame in a hot loop and 8 µs on a frame after an idle (``docs/runtime-measurements.md``,
#: "Per-frame overhead after an idle"); these are the same defaults, built once.  ONNX Runtime only
#: reads them during a run, so every session and thread shares them; nothing sets them.
RUN_OPTIONS = ort.RunOptions()

#: ONNX Runtime fusions that would change the float arithmetic of a graph (a non-power-of-two
#: multiplier folded into weights or a GEMM's alpha); every other fusion keeps exact values exact.
DISABLED_OPTIMIZERS = ["ConvMulFusion", "MatMulScaleFusion"]


class FusedRun:
    """A run of a program's ops as one ONNX Runtime session; ``run(env)`` -> the tensors it makes.

    ``outputs`` are the tensors later ops or the subgraph's caller read; ``produced`` every
    integer tensor of the run, which dump mode (``run(env, dump=True)``) returns from a second
    session of the same graph, built on first use.

    The graph is not kept once its session is open: its constants are the run's weights, which
    ONNX Runtime holds already.  ``rebuild`` writes it again from the run's ops (:func:`plan`), for
    dump mode's session and :meth:`graph`.  ``g`` is cleared once its protobuf is written, and
    ``release`` (e.g. dropping the mapped ``.npuf``'s pages the weights were read from) is called
    just before ONNX Runtime creates the session: that creation, with its copies and packed forms
    of the weights, is a load's high-water mark, and what the build read and wrote would be in it.
    """

    def __init__(self, g: Graph, outputs: list[str], produced: list[str], threads: int,
                 rebuild: Callable[[], Graph], release: Callable[[], object] | None = None,
                 store: fused_cache.Writer | None = None, span: range | None = None) -> None:
        """``store``: where the run's graph and weights are kept for later loads (:mod:`.fused_cache`);
        ``span``: the indices of the program's ops the run computes (what a stored plan names)."""
        self._setup(list(g.inputs), outputs, produced, threads, rebuild, release, span)
        model, arrays, small = self._model(g, outputs)
        if store is not None:
            store.add(model, arrays, small)
        self._open(self._session(model, arrays, small))

    @classmethod
    def stored(cls, inputs: list[str], outputs: list[str], produced: Produced, threads: int,
               rebuild: Callable[[], Graph], release: Callable[[], object] | None, span: range,
               model: onnx.ModelProto, arrays: dict[str, np.ndarray], small: bool,
               reread: Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray], bool]] | None = None) -> FusedRun:
        """The run whose graph, weights and memory-pattern flag an earlier load built and stored
        (:mod:`.fused_cache`); ``release`` is called before its session opens, as in a build;
        ``reread`` reads them again (:meth:`model`)."""
        run = cls.__new__(cls)
        run._setup(inputs, outputs, produced, threads, rebuild, release, span)
        run._reread = reread
        if release is not None:
            release()
        run._open(run._session(model, arrays, small))
        return run

    @classmethod
    def deferred(cls, inputs: list[str], outputs: list[str], produced: Produced, threads: int,
                 rebuild: Callable[[], Graph], release: Callable[[], object] | None, span: range,
                 reread: Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray], bool]]) -> FusedRun:
        """A stored run (:meth:`stored`) whose graph is neither read nor opened yet: :meth:`open`
        opens it (a load, once it knows the run is not joined into another graph:
        ``runtime/joined.py``), as a first run would.  Why: a session opened and dropped, for a run
        that then joins, leaves its creation's heap behind (PP-OCR cls on B4096: +0.15 MiB peak)."""
        run = cls.__new__(cls)
        run._setup(inputs, outputs, produced, threads, rebuild, release, span)
        run._reread = reread
        run.session, run._direct = None, (None, None)
        return run

    def _setup(self, inputs: list[str], outputs: list[str], produced: Produced, threads: int,
               rebuild: Callable[[], Graph], release: Callable[[], object] | None, span: range | None) -> None:
        self.inputs = inputs
        self.span = span
        self.outputs = outputs
        self._produced = produced
        self._threads = threads
        self._rebuild = rebuild
        self._release = release
        #: the session's input names, in order of ``inputs`` (a caller of :meth:`run_fed` keys its feeds by them)
        self.feed_names = [input_name(k) for k in range(len(self.inputs))]
        self._dump_session: ort.InferenceSession | None = None
        self._lock = threading.Lock()
        self._reread: Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray], bool]] | None = None

    @property
    def produced(self) -> list[str]:
        """Every tensor the run makes, in order (a stored run's: read from its ops when first asked)."""
        if callable(self._produced):
            self._produced = self._produced()
        return self._produced

    def _open(self, session: ort.InferenceSession) -> None:
        self.session = session
        #: the session's outputs by name, and (the session, its run without the Python wrapper's
        #: checks), one tuple so that a thread reads both at once; built again if ``session`` is replaced
        self._names = [o.name for o in self.session.get_outputs()]
        self._direct = (self.session, direct_run(self.session))

    def graph(self) -> Graph:
        """This run's graph, written again from its ops."""
        return self._rebuild()

    def model(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
        """This run's model as its session runs it: the model, its external weights and whether it
        keeps the memory pattern; read again from the stored plan it was loaded from, else written
        again from its ops (:meth:`graph`), which takes the build's memory (:mod:`.fused_cache`)."""
        if self._reread is not None:
            try:
                return self._reread()
            except (OSError, ValueError, KeyError, IndexError):  # the file went (trimmed, replaced): the build
                self._reread = None
        return self._model(self.graph(), self.outputs)

    def open(self) -> None:
        """Open the session where it is not (:meth:`deferred`, :meth:`close`); ``release`` first, as
        before a load's other creations."""
        with self._lock:
            if self.session is None:
                model, arrays, small = self.model()
                if self._release is not None:
                    self._release()
                self._open(self._session(model, arrays, small))

    def close(self) -> None:
        """Drop the session (a caller that runs this graph inside another one: ``runtime/joined.py``);
        a later run opens it again."""
        with self._lock:
            self.session = None
            self._direct = (None, None)

    def _model(self, g: Graph, outputs: list[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
        """``g`` as the graph that makes ``outputs``, its external weights and whether its session
        keeps the memory pattern; ``g`` is cleared and ``release`` called (the class docstring)."""
        heads = []
        for name in [t for t in outputs if t in g.perm]:  # a run's outputs in layer order
            fused_permute.restore(g, name)
        for name in outputs:
            if name in g.bytes and np.dtype(g.tensors[name]["dtype"]) == np.uint8 and not g.byte_offsets.get(name):
                heads.append((g.bytes[name], None))  # uint8 codes as an integer kernel wrote them
            else:
                heads.append(g.base(name))  # (may add the float32 view of bytes to the graph)
        nodes, inits = [], []
        for k, (name, (x, off)) in enumerate(zip(outputs, heads)):
            if off is None:
                nodes.append(helper.make_node("Identity", [x], [f"out{k}"]))
                continue
            if off:  # a centred tensor: its codes
                inits.append(numpy_helper.from_array(np.float32(off), f"off{k}"))
                nodes.append(helper.make_node("Add", [x, f"off{k}"], [f"coded{k}"]))
                x = f"coded{k}"
            if np.dtype(g.tensors[name]["dtype"]) == np.float32:  # the base is float32: no Cast to its own type
                nodes.append(helper.make_node("Identity", [x], [f"out{k}"]))
                continue
            nodes.append(helper.make_node("Cast", [x], [f"out{k}"], to=elem_type(g.tensors[name]["dtype"])))
        model, arrays = g.model([helper.make_tensor_value_info(f"out{k}", elem_type(g.tensors[t]["dtype"]),
                                                               g.tensors[t]["shape"]) for k, t in enumerate(outputs)],
                                nodes, inits)
        model = integer_quantize_steps(model)  # codes that leave as integers: the rounding's shorter tail
        small = g.float_bytes([*self.inputs, *self.produced]) <= SMALL_RUN_BYTES
        g.clear()
        if self._release is not None:
            self._release()
        return model, arrays, small

    def _session(self, model: onnx.ModelProto, arrays: dict[str, np.ndarray], small: bool) -> ort.InferenceSession:
        # Many sessions per Session: pool threads that spin between runs starve each other
        # (measured: 2 threads 50x slower than 1 on a 2-core machine), so they sleep.  No memory
        # pattern: its block of the planned activations would come on top of the arena chunks the
        # first run took; one arena for all the runtime's sessions, not one each (ort_session's
        # module docstring).  A small run keeps the pattern (``SMALL_RUN_BYTES``).
        return open_session(full_rank_constants(model), level="all", threads=self._threads, spinning=self._threads <= 1,
                            disabled_optimizers=DISABLED_OPTIMIZERS, external=arrays, mem_pattern=small,
                            shared_arena=True)

    def run(self, env: dict[str, np.ndarray], dump: bool = False) -> dict[str, np.ndarray]:
        feeds = {n: env[t] for n, t in zip(self.feed_names, self.inputs)}
        if not dump:
            return dict(zip(self.outputs, self.run_fed(feeds)))
        with self._lock:
            if self._dump_session is None:
                self._dump_session = self._session(*self._model(self.graph(), self.produced))
        return dict(zip(self.produced, self._dump_session.run(None, feeds)))

    def run_fed(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The run on ``feeds`` keyed by :attr:`feed_names`: its outputs in order of ``outputs``.

        For a caller that builds the feeds itself (``Session.run`` where a frame is this one run);
        the session's direct run is looked up again when ``session`` was replaced."""
        session, run = self._direct
        if session is None or session is not self.session:
            if self.session is None:  # closed (:meth:`close`) or deferred: open
                self.open()
            self._direct = session, run = self.session, direct_run(self.session)
        return run(self._names, feeds, RUN_OPTIONS)


def direct_run(session: object) -> Callable:
    """``session``'s run, ``(output_names, feeds, run_options) -> arrays``, called once per frame
    (with :data:`RUN_OPTIONS`).

    ``InferenceSession.run`` checks in Python, on every call, what the runtime's feeds satisfy by
    construction (every input fed by name, numpy arrays only, no graph capture, the CPU provider
    with no fallback to retry on), then calls its compiled session (``_sess.run``).  That session
    is called directly here, with the same arguments: the same ONNX Runtime run, the same output
    arrays, a few microseconds less per call (``docs/runtime-measurements.md``, "Where the time
    goes").  Anything else (a session wrapped by ``ort_session._Guarded`` for custom ops, an ONNX
    Runtime without ``_sess``) keeps its own ``run``.
    """
    inner = session.__dict__.get("_sess") if isinstance(session, ort.InferenceSession) else None
    run = getattr(inner, "run", None)
    return run if callable(run) else session.run
