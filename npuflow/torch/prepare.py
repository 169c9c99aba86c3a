"""Turn a captured float graph into a QAT graph that quantizes where the compiled model does.

Placement rules (the QDQ model the compiler consumes):

* every floating-point graph input is quantized;
* Conv/Linear become :class:`~npuflow.torch.layers.QatWeighted` (BatchNorm folded, quantized
  weight, int32 bias at ``s_in * s_w``); a reused module keeps one set of weights but every call
  gets its own input scale and output quantizer;
* the output of every other value-changing operation (conv, linear, ``+``, ``*``, pooling
  averages, concat, non-linear functions) is quantized, after the activation the target fuses
  into it when there is one (``Conv -> ReLU -> Q``, never ``Conv -> Q -> ReLU -> Q``);
* operations that only move or select quantized values (max pooling, reshapes, flatten, dropout,
  zero padding, a standalone ReLU) keep their input's quantization.
"""

from __future__ import annotations

import operator
from collections import Counter

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..operators import FUSABLE_ACTIVATIONS, clip_kind, conv_kind, fuses, is_depthwise, op_def
from ..targets import Target
from .capture import is_float_tensor
from .config import Formats
from .layers import QatWeighted
from .quantizer import FakeQuantizer, SharedQuantizer

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm

_PASS_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity,
    nn.ZeroPad2d, nn.ReLU,
)
_PASS_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool2d, torch.flatten, F.dropout,
    operator.getitem, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute,
    F.relu, torch.relu, torch.relu_,
}
_PASS_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "relu", "relu_", "expand", "clone", "detach",
}
_SILENT_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity)
_SILENT = {F.dropout, "contiguous", "clone", "detach"}  # pass-through ops that export no ONNX node
#: The ONNX op each torch activation exports to; its kind is the op registry's.
_ACTIVATION_MODULES = ((nn.ReLU, "Relu"), (nn.LeakyReLU, "LeakyRelu"), (nn.Hardswish, "HardSwish"),
                       (nn.Hardsigmoid, "HardSigmoid"))
_ACTIVATION_FUNCTIONS = {F.relu: "Relu", torch.relu: "Relu", torch.relu_: "Relu", F.leaky_relu: "LeakyRelu",
                         F.hardswish: "HardSwish", F.hardsigmoid: "HardSigmoid"}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_CAT = {torch.cat, torch.concat}
_MUL = {operator.mul, operator.imul, torch.mul}


def input_scale(quantizer: FakeQuantizer) -> torch.Tensor:
    """The scale a quantizer uses now (fed to a QAT layer for its int32 bias)."""
    return quantizer.quant_params()[0]


class _Rewriter:
    def __init__(self, gm: fx.GraphModule, target: Target, formats: Formats) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.target = target
        self.formats = formats
        self.modules = dict(gm.named_modules())
        self.quantized: dict[fx.Node, str] = {}  # node -> name of the quantizer of its value
        self.fused: set[fx.Node] = set()
        self.weighted_nodes: set[fx.Node] = set()
        self.groups: list[tuple[str, list[fx.Node]]] = []

    # --- classification -------------------------------------------------------------------

    def activation_name(self, node: fx.Node) -> str | None:
        """The registry kind of a fusable activation (``relu``, ``relu6``, ...), from the ONNX op
        the call exports to (:data:`_ACTIVATION_MODULES` / :data:`_ACTIVATION_FUNCTIONS`)."""
        kind = None
        if node.op == "call_module":
            m = self.modules.get(node.target)
            if isinstance(m, nn.Hardtanh):  # nn.ReLU6 too: a Clip, relu6 only for exactly [0, 6]
                kind = clip_kind(m.min_val, m.max_val)
            else:
                op = next((op for cls, op in _ACTIVATION_MODULES if isinstance(m, cls)), None)
                kind = op_def(op).kind if op else None
        elif node.op == "call_function":
            if node.target is F.relu6:
                kind = clip_kind(0.0, 6.0)
            elif node.target in _ACTIVATION_FUNCTIONS:
                kind = op_def(_ACTIVATION_FUNCTIONS[node.target]).kind
        elif node.op == "call_method" and node.target in ("relu", "relu_"):
            kind = op_def("Relu").kind
        return kind if kind in FUSABLE_ACTIVATIONS else None

    def is_pass_through(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules.get(node.target), _PASS_MODULES)
        if node.op == "call_function":
            if node.target is F.pad:
                mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
                value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
                return mode == "constant" and not value
            return node.target in _PASS_FUNCTIONS
        return node.op == "call_method" and node.target in _PASS_METHODS

    def op_kind(self, node: fx.Node) -> str | None:
        """The target op-rule name of a node that may absorb an activation."""
        if node in self.weighted_nodes:
            m = self.modules[node.target].module
            if isinstance(m, nn.Linear):
                return op_def("Gemm").kind
            return conv_kind(transposed=False, depthwise=is_depthwise(m.groups, m.in_channels))
        target = node.target
        if node.op == "call_function" and target in _ADD or node.op == "call_method" and target in ("add", "add_"):
            return op_def("Add").kind
        if node.op == "call_function" and target in _MUL or node.op == "call_method" and target in ("mul", "mul_"):
            return op_def("Mul").kind
        return None

    # --- edits ------------------------------------------------------------------------------

    def new_quantizer(self, node: fx.Node) -> fx.Node:
        """Insert a fake quantizer after ``node``; every other user now reads the quantized value."""
        f = self.formats
        q = FakeQuantizer(
            f.activation, power_of_two=f.power_of_two, symmetric=f.symmetric_activation,
            learnable=f.cfg.learnable, method=f.cfg.method, momentum=f.cfg.ema_momentum,
        )
        name = f"npuflow_aq_{node.name}"
        qn = self._insert_after(node, name, q)
        self.quantized[qn] = name
        return qn

    def _insert_after(self, node: fx.Node, name: str, module: torch.nn.Module) -> fx.Node:
        """Call ``module`` on ``node``'s output; every other user of ``node`` now reads the call."""
        module.name = name
        self.gm.add_submodule(name, module)
        with self.graph.inserting_after(node):
            qn = self.graph.call_module(name, (node,))
        qn.meta = dict(node.meta)
        node.replace_all_uses_with(qn, delete_user_cb=lambda user: user is not qn)
        return qn

    def quantize_output(self, node: fx.Node) -> None:
        users = list(node.users)
        if len(users) == 1 and fuses(self.target, self.op_kind(node), self.activation_name(users[0])):
            self.fused.add(users[0])
            self.new_quantizer(users[0])
        else:
            self.new_quantizer(node)

    def modules_from_functions(self) -> None:
        """``F.conv2d``/``F.linear`` on module parameters (traced through a layer subclass) become
        real ``nn.Conv2d``/``nn.Linear`` modules sharing those parameters, so they are wrapped,
        BN-folded and quantized like any other layer."""
        convs = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target not in (*convs, F.linear):
                continue
            names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
            args = dict(zip(names, node.args))
            args.update(node.kwargs)
            w_node, b_node = args.get("weight"), args.get("bias")
            if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr"):
                continue
            if b_node is not None and not (isinstance(b_node, fx.Node) and b_node.op == "get_attr"):
                continue
            weight = self.gm.get_parameter(w_node.target)
            bias = self.gm.get_parameter(b_node.target) if b_node is not None else None
            if node.target is F.linear:
                mod = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            else:
                groups = args.get("groups", 1)
                mod = convs[node.target](
                    weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                    stride=args.get("stride", 1), padding=args.get("padding", 0),
                    dilation=args.get("dilation", 1), groups=groups, bias=bias is not None)
            mod.weight = weight
            if bias is not None:
                mod.bias = bias
            owner = w_node.target.rsplit(".", 1)[0] if "." in w_node.target else ""
            path = f"{owner}.npuflow_layer" if owner else f"npuflow_layer_{node.name}"
            self.gm.add_submodule(path, mod)
            with self.graph.inserting_before(node):
                new = self.graph.call_module(path, (args["input"],))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            self.graph.erase_node(node)
            for attr in (w_node, b_node):
                if attr is not None and not attr.users:
                    self.graph.erase_node(attr)
        self.modules = dict(self.gm.named_modules())

    def fold_and_wrap(self) -> None:
        calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")
        wrapped: dict[str, QatWeighted] = {}
        f = self.formats
        for node in list(self.graph.nodes):
            if node.op != "call_module" or not isinstance(self.modules.get(node.target), _WEIGHTED):
                continue
            self.weighted_nodes.add(node)
            if node.target in wrapped:
                continue
            mod = self.modules[node.target]
            bn = None
            users = list(node.users)
            if (f.cfg.fold_bn and calls[node.target] == 1 and len(users) == 1
                    and users[0].op == "call_module"
                    and isinstance(self.modules.get(users[0].target), _BN)
                    and calls[users[0].target] == 1 and not isinstance(mod, nn.Linear)):
                bn_node = users[0]
                bn = self.modules[bn_node.target]
                bn_node.replace_all_uses_with(node)
                self.graph.erase_node(bn_node)
                self.gm.delete_submodule(bn_node.target)  # it lives on inside the QAT layer
            wq = FakeQuantizer(
                f.weight, power_of_two=f.power_of_two, axis=0 if f.per_channel else None,
                channels=mod.weight.shape[0], learnable=f.cfg.learnable, method=f.cfg.method, weight=True,
            )
            wq.name = f"{node.target}.weight"
            wrapped[node.target] = QatWeighted(mod, wq, f.bias, bn)
            wrapped[node.target].path = node.target
            self.gm.add_submodule(node.target, wrapped[node.target])
        self.modules = dict(self.gm.named_modules())

    def place_quantizers(self) -> None:
        for node in list(self.graph.nodes):
            if node.op == "placeholder":
                if is_float_tensor(node):
                    self.new_quantizer(node)
            elif node.op in ("call_module", "call_function", "call_method"):
                self._visit(node)

    def _source_quantizer(self, node: fx.Node) -> str | None:
        while node not in self.quantized:
            if not self.is_pass_through(node) or not node.args or not isinstance(node.args[0], fx.Node):
                return None
            node = node.args[0]
        return self.quantized[node]

    def _visit(self, node: fx.Node) -> None:
        if node in self.fused:
            return
        if node in self.weighted_nodes:
            x = node.args[0]
            qname = self._source_quantizer(x)
            if qname is None:
                qname = self.quantized[self.new_quantizer(x)]
                x = node.args[0]
            with self.graph.inserting_before(node):
                ref = self.graph.get_attr(qname)
                scale = self.graph.call_function(input_scale, (ref,))
            node.args = (node.args[0], scale)
            self.quantize_output(node)
            return
        if self.is_pass_through(node):
            source = self._source_quantizer(node)
            if source is None:
                if is_float_tensor(node):
                    self.quantize_output(node)
            elif is_float_tensor(node) and not self._is_silent(node):
                self.shared_quantizer(node, source)
            return
        if is_float_tensor(node):
            self.quantize_output(node)
            if self._matches(node, _ADD | _SUB, ("add", "add_", "sub", "sub_")):
                self.groups.append(("add", [a for a in node.args[:2] if isinstance(a, fx.Node)]))
            elif self._matches(node, _CAT, ("cat",)):
                tensors = node.args[0] if node.args else node.kwargs.get("tensors", [])
                self.groups.append(("cat", [a for a in tensors if isinstance(a, fx.Node)] + [next(iter(node.users))]))

    def _matches(self, node: fx.Node, functions: set, methods: tuple[str, ...]) -> bool:
        if node.op == "call_function":
            return node.target in functions
        return node.op == "call_method" and node.target in methods

    def _is_silent(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules.get(node.target), _SILENT_MODULES)
        return node.target in _SILENT

    def shared_quantizer(self, node: fx.Node, source: str) -> None:
        """Re-quantize a pass-through output with its input's scale (an export-only step)."""
        sq = SharedQuantizer(self.gm.get_submodule(source))
        qn = self._insert_after(node, f"npuflow_sq_{node.name}", sq)
        self.quantized[qn] = source

    def share_scales(self) -> None:
        """Scale groups: inputs of add/sub on power-of-two targets; concat inputs and output."""
        for kind, members in self.groups:
            names = [self._source_quantizer(m) for m in members]
            quantizers = [self.gm.get_submodule(n) for n in names if n is not None]
            if len(quantizers) < 2:
                continue
            if kind == "add" and not self.formats.power_of_two:
                continue
            for q in quantizers[1:]:
                q.share_with(quantizers[0])


def merge_repeated_items(graph: fx.Graph) -> int:
    """One ``getitem`` node per element of a tuple: the converter writes ``split[1]`` again for
    each use (YOLOv8n's C2f reads a ``Split`` output in its concat and its next block), and each
    copy would get a quantizer of its own -- two quantize steps of one tensor, which the export
    cannot name apart.  Later copies are folded into the first; returns how many."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    merged = 0
    for node in list(graph.nodes):
        first: dict[int, fx.Node] = {}
        for user in sorted(node.users, key=order.__getitem__):
            if user.op != "call_function" or user.target is not operator.getitem or user.args[0] is not node \
                    or not isinstance(user.args[1], int) or user.kwargs:
                continue
            kept = first.setdefault(user.args[1], user)
            if kept is not user:
                user.replace_all_uses_with(kept)
                graph.erase_node(user)
                merged += 1
    return merged


def rewrite(gm: fx.GraphModule, target: Target, formats: Formats) -> fx.GraphModule:
    """Fold BatchNorms, wrap weighted layers and insert activation quantizers, in place."""
    merge_repeated_items(gm.graph)
    rw = _Rewriter(gm, target, formats)
    rw.modules_from_functions()
    rw.fold_and_wrap()
    rw.place_quantizers()
    rw.share_scales()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
