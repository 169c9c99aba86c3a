"""QAT capture, training state, export, and the torch == ONNX Runtime integer chain."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from npuflow.errors import NpuflowError
from npuflow.torch import QatConfig, prepare_qat
from npuflow.fake_quant import quantize_codes
from npuflow.torch.layers import QatWeighted
from npuflow.torch.quantizer import FakeQuantizer
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"


class TinyResNet(nn.Module):
    """Conv+BN+ReLU stem, one residual block joined with `+`, a ReLU module reused three times."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = F.max_pool2d(x, 2)
        y = self.act(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        x = self.act(x + y)
        x = F.max_pool2d(x, 2)
        return self.head(x.flatten(1))


class Shared(nn.Module):
    """One conv called twice, `+` and `*` on tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        a = self.conv(x)
        b = self.conv(torch.relu(a))
        return a + b * x


def _randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


def _digits(n: int, seed: int = 0) -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = load_digits().images[seed * n:(seed + 1) * n].astype(np.float32) / 16.0
    big = np.repeat(np.repeat(images, 3, axis=1), 3, axis=2)  # 8x8 -> 24x24
    return torch.from_numpy(np.pad(big, ((0, 0), (2, 2), (2, 2)))[:, None])


def _ort_codes(model: onnx.ModelProto, xs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Run the exported model in ORT and return every quantize step's int8 output, by quantizer."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    q_nodes = [n for n in m.graph.node if n.doc_string.startswith("npuflow.torch quantizer: ")]
    for n in q_nodes:
        m.graph.output.append(helper.make_tensor_value_info(n.output[0], TensorProto.INT8, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts)
    results = []
    for x in xs:
        outs = sess.run([n.output[0] for n in q_nodes], {sess.get_inputs()[0].name: x})
        results.append({n.doc_string.split(": ", 1)[1]: o for n, o in zip(q_nodes, outs)})
    return results


def _torch_codes(qat, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Integer codes of every activation quantizer in the torch fake-quant forward."""
    codes: dict[str, np.ndarray] = {}
    hooks = []
    for name, q in qat.activation_quantizers():
        def hook(mod, inputs, _out, name=name):
            scale, zp = mod.quant_params()
            codes[name] = quantize_codes(inputs[0], scale, zp, mod.spec)[1].numpy().astype(np.int64)
        hooks.append(q.register_forward_hook(hook))
    with torch.no_grad():
        qat(x)
    for h in hooks:
        h.remove()
    return codes


def _train_a_little(qat, data: torch.Tensor, steps: int = 3) -> None:
    opt = torch.optim.Adam([
        {"params": qat.non_quantizer_parameters(), "lr": 1e-3},
        {"params": qat.quantizer_parameters(), "lr": 1e-2},
    ])
    qat.train()
    for i in range(steps):
        opt.zero_grad()
        out = qat(data[i * 8:(i + 1) * 8])
        out.pow(2).mean().backward()
        opt.step()


@pytest.fixture(scope="module")
def mnist_qat():
    data = _digits(64)
    qat = prepare_qat(fixture_models.mnist_torch(), torch.zeros(1, 1, 28, 28), DPU, {"learnable": True})
    qat.calibrate([data[:32]])
    _train_a_little(qat, data)
    return qat, qat.to_deployable(), data


@pytest.fixture(scope="module")
def resnet_qat():
    torch.manual_seed(0)
    data = _digits(64, seed=1)
    qat = prepare_qat(_randomise_bn(TinyResNet()), torch.zeros(1, 1, 28, 28), DPU)
    _train_a_little(qat, data)  # observers on, BN folded with batch statistics
    qat.freeze_bn()
    qat.freeze_observers()
    _train_a_little(qat, data)
    return qat, qat.to_deployable(), data


@pytest.mark.parametrize("which", ["mnist_qat", "resnet_qat"])
def test_every_int8_tensor_equals_onnx_runtime(which, request):
    qat, model, data = request.getfixturevalue(which)
    qat.eval()
    xs = [data[40 + i:41 + i] for i in range(6)]
    for x, ref in zip(xs, _ort_codes(model, [x.numpy() for x in xs])):
        got = _torch_codes(qat, x)
        assert set(got) <= set(ref) and len(got) >= 5
        for name, codes in got.items():
            assert np.array_equal(codes, ref[name].astype(np.int64)), name


def test_exported_quant_params_are_the_trained_ones(mnist_qat):
    qat, model, _ = mnist_qat
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    checked = 0
    for name, q in qat.activation_quantizers():
        node = next(n for n in model.graph.node if n.doc_string.endswith(": " + name))
        scale = float(q.quant_params()[0].detach())
        assert float(inits[node.input[1]]) == scale
        fix = int(q.group_leader().spec.bits - 1 - np.floor(q.group_leader().log2_threshold.item() + 0.5))
        assert scale == 2.0 ** -fix
        checked += 1
    assert checked >= 5
    conv = qat.graph_module.get_submodule("conv_layers.0")
    w = inits["conv_layers.0.weight_quantized"]
    s = inits["conv_layers.0.weight_scale"]
    assert w.dtype == np.int8 and float(s) == float(conv.weight_quant.quant_params()[0].detach())
    b = inits["conv_layers.0.bias_quantized"]
    assert b.dtype == np.int32
    assert float(inits["conv_layers.0.bias_scale"]) == float(s) * float(inits["x_scale"])


def test_onnx_runtime_output_equals_qat_output_default_optimisations(resnet_qat):
    qat, model, data = resnet_qat
    qat.eval()
    sess = ort.InferenceSession(model.SerializeToString())
    with torch.no_grad():
        for i in range(4):
            x = data[i:i + 1]
            assert np.array_equal(sess.run(None, {"x": x.numpy()})[0], qat(x).numpy())


def test_capture_gives_reused_modules_and_tensor_ops_their_own_quantizers():
    net = Shared()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    qat = prepare_qat(net, torch.randn(1, 4, 6, 6), "cpu-int8")
    acts = dict(qat.activation_quantizers())
    # input, conv call 1, conv call 2, mul, add: five quantizers for one conv module
    assert len(acts) == 5
    weighted = [m for m in qat.graph_module.modules() if isinstance(m, QatWeighted)]
    assert len(weighted) == 1  # one set of weights for both calls
    code = qat.graph_module.code
    assert code.count("self.conv(") == 2
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # user model untouched
    model = qat.to_deployable()
    types = [n.op_type for n in model.graph.node]
    assert types.count("Conv") == 2 and "Add" in types and "Mul" in types
    # cpu-int8 rounds half to even: standard Q; the standalone ReLU re-quantizes with its input's scale
    assert types.count("QuantizeLinear") == 6


def test_conv_bn_is_folded_and_freeze_bn_stops_statistics():
    torch.manual_seed(0)
    net = _randomise_bn(TinyResNet())
    qat = prepare_qat(net, torch.zeros(1, 1, 28, 28), DPU)
    stem = qat.graph_module.get_submodule("stem")
    assert isinstance(stem, QatWeighted) and stem.bn is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for n, m in qat.graph_module.named_children())
    data = torch.rand(8, 1, 28, 28)
    before = stem.bn.running_mean.clone()
    qat.train()
    qat(data)
    assert not torch.equal(before, stem.bn.running_mean)
    qat.freeze_bn()
    frozen = stem.bn.running_mean.clone()
    qat(data)
    assert torch.equal(frozen, stem.bn.running_mean)
    # eval mode: the folded conv equals conv followed by the (running-statistics) BatchNorm
    qat.eval()
    with torch.no_grad():
        w, b = stem.folded_params(data)
        ref = stem.bn(F.conv2d(data, stem.module.weight, None, padding=1))
        assert torch.allclose(F.conv2d(data, w, b, padding=1), ref, atol=1e-5)


def test_residual_add_inputs_share_one_power_of_two_scale(resnet_qat):
    qat, model, _ = resnet_qat
    add = next(n for n in model.graph.node if n.op_type == "Add")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    scales = [float(inits[producers[i].input[1]]) for i in add.input]
    assert scales[0] == scales[1]


def test_to_deployable_writes_a_file_that_loads(tmp_path, resnet_qat):
    qat, _, _ = resnet_qat
    path = tmp_path / "qat.onnx"
    from npuflow.torch import export_qat

    export_qat(qat, path)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert {p.key: p.value for p in m.metadata_props}["npuflow.target"] == DPU


def test_capture_failure_names_the_model():
    class Dynamic(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(NpuflowError) as err:
        prepare_qat(Dynamic(), torch.zeros(1, 3), DPU)
    assert err.value.code == "NPF_TORCH_CAPTURE_FAILED" and "Dynamic" in err.value.message


def test_bad_inputs_and_config_are_coded_errors():
    with pytest.raises(NpuflowError) as err:
        prepare_qat(TinyResNet(), torch.zeros(1, 3, 28, 28), DPU)  # wrong channel count
    assert err.value.code == "NPF_TORCH_BAD_INPUTS"
    with pytest.raises(NpuflowError) as err:
        prepare_qat("not a module", torch.zeros(1), DPU)
    assert err.value.code == "NPF_TORCH_BAD_INPUTS"
    with pytest.raises(NpuflowError) as err:
        prepare_qat(TinyResNet(), torch.zeros(1, 1, 28, 28), DPU, {"weight_bits": 1})
    assert err.value.code == "NPF_TORCH_BAD_CONFIG" and "weight_bits" in err.value.message
    with pytest.raises(NpuflowError) as err:
        prepare_qat(TinyResNet(), torch.zeros(1, 1, 28, 28), DPU, {"per_channel": True})
    assert err.value.code == "NPF_TORCH_BAD_CONFIG" and "power-of-two" in err.value.message
    with pytest.raises(NpuflowError) as err:
        QatConfig  # noqa: B018  (the config class is public)
        prepare_qat(TinyResNet(), torch.zeros(1, 1, 28, 28), DPU, {"bogus": 1})
    assert err.value.code == "NPF_TORCH_BAD_CONFIG" and "bogus" in err.value.message


def test_export_failure_is_a_coded_error():
    from npuflow.torch.export import torch_to_onnx

    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x)

    with pytest.raises(NpuflowError) as err:
        torch_to_onnx(Unexportable(), (torch.zeros(2),), ["x"], ["y"])
    assert err.value.code == "NPF_TORCH_EXPORT_FAILED"


def test_learnable_quantizers_are_separate_parameter_groups(mnist_qat):
    qat, _, _ = mnist_qat
    qp = qat.quantizer_parameters()
    assert qp and all(p.dim() == 0 for p in qp)
    ids = {id(p) for p in qp}
    assert not ids & {id(p) for p in qat.non_quantizer_parameters()}
    assert all(isinstance(q, FakeQuantizer) for _, q in qat.quantizers())


@pytest.mark.parametrize("which", ["mnist_qat", "resnet_qat"])
def test_compiled_integer_executor_equals_torch_fake_quant(which, request, tmp_path):
    """One numerics: every int8 tensor of the compiled DPU program (subgraph outputs included)
    equals the torch QAT forward's integer codes."""
    import json

    import npuflow

    qat, model, data = request.getfixturevalue(which)
    qat.eval()
    compiled = npuflow.compile(model, DPU)
    npu = [sg for sg in compiled.subgraphs if sg.on_accelerator]
    assert npu and all(sg.device == "DPU" for sg in npu)
    tensor_of = {n.doc_string.split(": ", 1)[1]: n.output[0] for n in model.graph.node
                 if n.doc_string.startswith("npuflow.torch quantizer: ")}
    sess = npuflow.Session(compiled)
    subgraph_outputs = {o for sg in npu for o in sg.outputs}
    for i in range(4):
        x = data[50 + i:51 + i]
        dump = tmp_path / f"dump{i}"
        sess.run({"x": x.numpy()}, dump_dir=dump)
        index = json.loads((dump / "index.json").read_text())
        got = _torch_codes(qat, x)
        compared = 0
        for name, codes in got.items():
            t = tensor_of[name]
            assert t in index, t
            assert np.array_equal(np.load(dump / index[t]).astype(np.int64), codes), t
            compared += 1
        assert compared == len(got) >= 5
        # the NPU subgraph outputs are among the compared tensors (or their dequantized form)
        assert all(o in index for o in subgraph_outputs)


def test_ptq_of_a_module_compiles_like_any_other():
    import npuflow
    from npuflow.torch import quantize

    data = _digits(16, seed=2)
    qm = quantize(fixture_models.mnist_torch(), torch.zeros(1, 1, 28, 28), data, DPU)
    compiled = npuflow.compile(qm.model, DPU)
    assert all(sg.device == "DPU" for sg in compiled.subgraphs)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(qm.model.SerializeToString(), opts)
    sess = npuflow.Session(compiled)
    x = data[:1].numpy()
    assert np.array_equal(sess.run({"input": x})["output"], ref.run(None, {"input": x})[0])


def test_core_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, npuflow, npuflow.cli.commands; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_concat_inputs_and_output_share_one_scale():
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 3, 1)
            self.b = nn.Conv2d(2, 3, 1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x) * 4.0], dim=1)

    qat = prepare_qat(Cat(), torch.zeros(1, 2, 4, 4), DPU)
    qat.calibrate([torch.randn(4, 2, 4, 4)])
    model = qat.to_deployable()
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    out_q = next(n for n in model.graph.node if n.input and n.input[0] == concat.output[0])
    scales = {float(inits[producers[i].input[1]]) for i in concat.input} | {float(inits[out_q.input[1]])}
    assert len(scales) == 1


def test_relu_fuses_into_the_conv_as_the_onnx_quantizer_fuses_it(tmp_path):
    """The torch front asks the operator registry (``operators.fuses``), as the ONNX quantizer
    does: on a target whose conv rule lists no activations, ReLU/ReLU6 still fuse into the
    convolution (no quantize step between), so QAT quantizes the tensors PTQ quantizes.  The torch
    front used to fuse only what the rule listed."""
    from pathlib import Path

    import npuflow
    from npuflow.torch import export_qat

    data = Path(npuflow.targets.__file__).parent / "data"
    (tmp_path / "cpu-int8.yaml").write_text((data / "cpu-int8.yaml").read_text())
    user = tmp_path / "mine.yaml"
    user.write_text("base: cpu-int8.yaml\nname: MINE\nfingerprint: '0x7'\nops:\n  conv2d: {activations: []}\n")
    target = npuflow.load_target(user)
    assert target.rule("conv2d").activations == ()
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1), nn.ReLU6())
    qat = prepare_qat(net.eval(), torch.zeros(1, 1, 8, 8), target)
    qat.calibrate([_digits(4)[:, :, :8, :8]])
    model = export_qat(qat, None)
    producer = {o: n for n in model.graph.node for o in n.output}
    relus = [n for n in model.graph.node if n.op_type in ("Relu", "Clip")]
    assert len(relus) == 2 and all(producer[r.input[0]].op_type == "Conv" for r in relus), \
        [n.op_type for n in model.graph.node]
