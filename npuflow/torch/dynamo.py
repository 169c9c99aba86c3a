"""``torch.compile(model, backend="npuflow")``: run captured graphs as compiled INT8 models.

The role of Vitis AI's WeGO in today's PyTorch idiom.  TorchDynamo captures the tensor code of a
``forward`` into FX graphs and leaves the rest (Python pre/post-processing, data-dependent control
flow) to ordinary Python, splitting at graph breaks.  Each captured graph is handed to
:func:`backend`, which freezes the module's weights into it, exports it to ONNX
(:func:`npuflow.torch.ptq.quantize`, the one PTQ path), quantizes it for the target, compiles it
into a ``.npuf`` (:func:`npuflow.compile`) and runs it with :class:`npuflow.Session`: the
accelerator subgraphs as npuflow's integer programs, the rest of the graph on ONNX Runtime's CPU
provider, exactly as the deployed ``.npuf`` would.

Calibration: ``options={"calib_data": ...}`` (what :func:`npuflow.torch.quantize` takes: a
tensor of samples, a list of tensors or tuples, a folder) quantizes when the graph is compiled.
Without it the first ``calibration_calls`` calls (default 8) run the float graph while their inputs
are recorded, and the graph is quantized on the inputs it actually sees; a warning says so,
because until then the outputs are float.

The weights are frozen when the graph is quantized, as a deployed model's are: a parameter or
buffer changed in place afterwards (training, ``load_state_dict``) is the coded error
``NPF_TORCH_WEIGHTS_CHANGED`` instead of a stale result.  Each new input shape is a new graph
(``torch.compile(..., dynamic=False)``, which :func:`compile` passes), quantized and compiled anew.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import fx, nn

from ..errors import NpuflowError

log = logging.getLogger(__name__)

#: Calls that calibrate (run in float) when no ``calib_data`` is given.
CALIBRATION_CALLS = 8
#: Option names :func:`backend` accepts (anything else is a coded error, not silently ignored).
OPTIONS = ("target", "calib_data", "calibration_calls", "config", "threads")


@dataclass
class _Options:
    target: Any
    calib_data: Any = None
    calibration_calls: int = CALIBRATION_CALLS
    config: Any = None
    threads: int = 1

    @classmethod
    def parse(cls, options: dict | None) -> "_Options":
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise NpuflowError("NPF_TORCH_BAD_BACKEND_OPTION", name=unknown[0], reason="unknown option",
                               allowed=", ".join(OPTIONS))
        if opts.get("target") is None:
            raise NpuflowError("NPF_TORCH_BAD_BACKEND_OPTION", name="target", reason="missing",
                               allowed=", ".join(OPTIONS))
        calls = opts.get("calibration_calls", CALIBRATION_CALLS)
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
            raise NpuflowError("NPF_TORCH_BAD_BACKEND_OPTION", name="calibration_calls",
                               reason=f"{calls!r} is not a positive integer", allowed=", ".join(OPTIONS))
        return cls(**opts)


def _is_module_state(node: fx.Node, value: Any) -> bool:
    """A graph input that is a parameter or buffer of a module (Dynamo lifts them to inputs)."""
    if isinstance(value, nn.Parameter):
        return True
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    kind = getattr(getattr(source, "guard_source", None), "name", "")
    return "NN_MODULE" in kind or "FSDP_MODULE" in kind


class _Frozen(nn.Module):
    """The captured graph as a module of the user's inputs only, the module state as buffers
    (so that the ONNX export carries them as initializers)."""

    def __init__(self, gm: fx.GraphModule, state: dict[int, torch.Tensor], arity: int) -> None:
        super().__init__()
        self.gm = gm
        self.arity = arity
        self.positions = sorted(state)
        for i, pos in enumerate(self.positions):
            self.register_buffer(f"state_{i}", state[pos].detach().clone())

    def forward(self, *inputs: torch.Tensor):
        args: list[Any] = []
        it = iter(inputs)
        state = {pos: getattr(self, f"state_{i}") for i, pos in enumerate(self.positions)}
        for pos in range(self.arity):
            args.append(state[pos] if pos in state else next(it))
        out = self.gm(*args)
        return tuple(out) if isinstance(out, (list, tuple)) else out


@dataclass
class CompiledGraph:
    """What :func:`backend` returns for one captured graph: callable like the graph itself.

    ``float_model`` is the graph exported to ONNX with the weights frozen; ``session`` runs it
    once quantized and compiled.  A graph in which :func:`npuflow.check` places nothing on the
    accelerator (``on_accelerator`` false: e.g. the ``argmax`` after a graph break) keeps running
    in torch: quantizing it would only add error.
    """

    gm: fx.GraphModule
    options: _Options
    inputs: list[int]  # positions of the user's inputs among the graph's arguments
    state: dict[int, torch.Tensor]  # positions -> module parameters/buffers (frozen at quantization)
    list_output: bool
    float_model: Any  # onnx.ModelProto
    on_accelerator: bool
    quantized: Any = None  # the npuflow.QuantizedModel (``.save(dir)`` keeps it, ``.report`` its accuracy)
    session: Any = None  # npuflow.Session running the compiled quantized model
    _recorded: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    _versions: dict[int, int] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.float_model.graph.input]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.float_model.graph.output]

    def __call__(self, *args: Any):
        if not self.on_accelerator:
            return self.gm(*args)
        if self.session is None:
            self._recorded.append(tuple(args[i].detach().cpu().numpy().copy() for i in self.inputs))
            if len(self._recorded) < self.options.calibration_calls:
                return self.gm(*args)
            self.quantize(self._calibration())
        self._check_state(args)
        feeds = {name: args[pos].detach().cpu().numpy() for name, pos in zip(self.input_names, self.inputs)}
        outputs = self.session.run(feeds)
        result = [torch.from_numpy(np.ascontiguousarray(outputs[name])) for name in self.output_names]
        return result if self.list_output else result[0]

    def quantize(self, calib: Any) -> None:
        """Quantize the frozen graph on ``calib`` (numpy samples), compile it, open a session."""
        from ..compiler import compile_model
        from ..quant import quantize
        from ..runtime import Session

        quantized = quantize(self.float_model, calib, self.options.target, self.options.config)
        if quantized.problem is not None:
            log.warning("npuflow backend: [%s] %s", quantized.problem.code, quantized.problem.message)
        compiled = compile_model(quantized.model, self.options.target)
        self.quantized = quantized
        self.session = Session(compiled, self.options.target, threads=self.options.threads)
        self._versions = {pos: t._version for pos, t in self.state.items()}
        self._recorded.clear()

    def fitting(self, calib_data: Any, examples: tuple[torch.Tensor, ...]) -> Any:
        """``calib_data`` as numpy samples when they fit this graph's inputs, else None."""
        from .ptq import calibration_samples

        samples = calibration_samples(calib_data, examples)
        first = samples[0] if isinstance(samples, list) and samples else None
        arrays = list(first.values()) if isinstance(first, dict) else list(first) if isinstance(first, tuple) \
            else [first]
        shapes = [tuple(e.shape) for e in examples]
        if first is None:
            return None
        given = [tuple(np.shape(a)) for a in arrays]
        if given == shapes:
            return samples
        order = _reordering(given, shapes) if isinstance(first, tuple) else None
        if order is None:
            return None
        return [tuple(sample[k] for k in order) for sample in samples]

    def _calibration(self) -> list[np.ndarray] | list[dict[str, np.ndarray]]:
        """The recorded inputs as calibration samples (one array, or a dict per sample)."""
        samples = self._recorded
        return [s[0] for s in samples] if len(self.inputs) == 1 else [dict(zip(self.input_names, s)) for s in samples]

    def _check_state(self, args: Sequence[Any]) -> None:
        for pos, version in self._versions.items():
            if args[pos] is not self.state[pos] or args[pos]._version != version:
                raise NpuflowError("NPF_TORCH_WEIGHTS_CHANGED", position=pos)


def _reordering(given: list[tuple[int, ...]], wanted: list[tuple[int, ...]]) -> list[int] | None:
    """Positions in ``given`` (a calibration tuple's shapes, in the forward's argument order) of
    each of ``wanted`` (the captured graph's input shapes), when every wanted shape is another
    and each is given exactly once; else None.

    Why: TorchDynamo numbers a graph's inputs in the order the forward first reads them, not in
    its argument order: a GCN's ``forward(x, adj)`` that reads ``adj`` first is captured as
    ``(adj, x)``, and ``calib_data`` of ``(x, adj)`` tuples was refused as not fitting (the graph
    then calibrated on its first 8 calls instead)."""
    if len(given) != len(wanted) or len(set(wanted)) != len(wanted) or sorted(given) != sorted(wanted):
        return None
    return [given.index(shape) for shape in wanted]


def backend(gm: fx.GraphModule, example_inputs: list[Any], options: dict | None = None) -> Callable:
    """The ``"npuflow"`` TorchDynamo backend (registered through the ``torch_dynamo_backends``
    entry point, so ``torch.compile(m, backend="npuflow", options={"target": ...})`` works
    without importing npuflow): check, quantize and compile one captured graph.

    Dynamo wraps a backend's exception in its ``BackendCompilerFailed``, whose message is the
    exception's ``str``: a coded error's ``str`` carries its hint, the one thing the user sees
    (``NPF_TORCH_DYNAMIC_SHAPES`` read "symbolic size s77 = s77" without "dynamic=False")."""
    from ..check import check
    from .ptq import export_float

    opts = _Options.parse(options)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise NpuflowError("NPF_TORCH_BAD_INPUTS", reason="the captured graph's inputs do not match its examples")
    inputs: list[int] = []
    state: dict[int, torch.Tensor] = {}
    for pos, (node, value) in enumerate(zip(placeholders, example_inputs)):
        if not isinstance(value, torch.Tensor):
            raise NpuflowError("NPF_TORCH_DYNAMIC_SHAPES", name=node.name, value=repr(value))
        if _is_module_state(node, value):
            state[pos] = value
        else:  # float data, or integer token ids / indices (the quantizer leaves those as they are)
            inputs.append(pos)
    if not inputs:
        raise NpuflowError("NPF_TORCH_BAD_INPUTS", reason="the captured graph has no tensor input")
    out = gm(*example_inputs)
    examples = tuple(example_inputs[i].detach() for i in inputs)
    frozen = _Frozen(gm, state, len(example_inputs))
    float_model = export_float(frozen, examples, [f"input_{i}" for i in range(len(inputs))])
    placed = check(float_model, opts.target).summary["npu_nodes"] > 0
    graph = CompiledGraph(gm, opts, inputs, state, isinstance(out, (list, tuple)), float_model, placed)
    if not placed:
        log.info("npuflow backend: nothing in this graph runs on %s; it stays in torch", opts.target)
        return graph
    samples = graph.fitting(opts.calib_data, examples) if opts.calib_data is not None else None
    if samples is not None:
        graph.quantize(samples)
    else:
        why = "no calib_data" if opts.calib_data is None else \
            f"calib_data does not fit this graph's inputs {[list(e.shape) for e in examples]}"
        log.warning("npuflow backend: %s; the first %d call(s) run in float and calibrate, then the graph "
                    "is quantized for %s", why, opts.calibration_calls, opts.target)
    return graph


def compile(module: nn.Module, target: str, calib_data: Any = None, *, config: Any = None,
            calibration_calls: int = CALIBRATION_CALLS, threads: int = 1) -> Callable:
    """``torch.compile(module, backend="npuflow", dynamic=False, options=...)`` with the options as arguments.

    Warns for a module holding an ``nn.RNN``/``LSTM``/``GRU``: TorchDynamo does not capture one (its
    graph break skips the whole forward that calls it), so the backend is never called and the
    module runs in float, nothing quantized, without a word (Resemblyzer's LSTM speaker encoder:
    cosine 1.0 to float on cpu-int8).  With ``torch._dynamo.config.allow_rnn = True`` (experimental)
    it is captured and quantized (0.99984); ``npuflow.torch.quantize`` exports it without Dynamo."""
    rnns = sorted({type(m).__name__ for m in module.modules() if isinstance(m, nn.RNNBase)})
    if rnns and not torch._dynamo.config.allow_rnn:
        log.warning("npuflow.torch.compile: TorchDynamo does not capture %s: the forward that calls it runs in float, "
                    "nothing quantized; set torch._dynamo.config.allow_rnn = True (experimental) before the first call, "
                    "or use npuflow.torch.quantize (ONNX export)", "/".join(rnns))
    options = {"target": target, "calib_data": calib_data, "config": config,
               "calibration_calls": calibration_calls, "threads": threads}
    return torch.compile(module, backend="npuflow", dynamic=False, options=options)
