"""A LayerNorm written out node by node is one ``LayerNormalization`` (``passes/layer_norm.py``).

ConvNeXt's and EdgeNeXt's channels-first LayerNorm (``mean over C, subtract, square, mean, + eps,
sqrt, divide, scale, shift``) and ``nn.LayerNorm`` exported below opset 17 alternated integer nodes
and float CPU nodes: EdgeNeXt compiled to 45-55 subgraphs (newuser_flows21.md).  As one unit the
LayerNorm is one CPU island between two accelerator subgraphs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.layer_norm import layer_norms
from tests.unit.quant_nets import run, samples

C = 8
MAP = [1, 4, 6, 6]
TOKENS = [1, 5, C]


def _mean(name: str, x: str, y: str, axis: int, opset: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    if opset >= 18:
        axes = numpy_helper.from_array(np.array([axis], np.int64), f"{name}_axes")
        return helper.make_node("ReduceMean", [x, axes.name], [y], name=name, keepdims=1), [axes]
    return helper.make_node("ReduceMean", [x], [y], name=name, axes=[axis], keepdims=1), []


def _written_ln(x: str, y: str, axis: int, opset: int, affine_shape: list[int] | None,
                square: str = "Pow") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``(x - u) / sqrt(mean((x - u)^2) + eps) * w + b`` over ``axis``, as torch writes it out."""
    rng = np.random.default_rng(7)
    m1, i1 = _mean("mean", x, "u", axis, opset)
    m2, i2 = _mean("var", "sq", "v", axis, opset)
    inits = [*i1, *i2, numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    sq = helper.make_node("Pow", ["d", "two"], ["sq"], name="square") if square == "Pow" else \
        helper.make_node("Mul", ["d", "d"], ["sq"], name="square")
    nodes = [m1, helper.make_node("Sub", [x, "u"], ["d"], name="centre"), sq, m2,
             helper.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
             helper.make_node("Div", ["d", "s"], ["n" if affine_shape else y], name="div")]
    if affine_shape:
        inits += [numpy_helper.from_array((1 + 0.2 * rng.standard_normal(affine_shape)).astype(np.float32), "w"),
                  numpy_helper.from_array((0.2 * rng.standard_normal(affine_shape)).astype(np.float32), "b")]
        nodes += [helper.make_node("Mul", ["w", "n"], ["nw"], name="scale"),
                  helper.make_node("Add", ["nw", "b"], [y], name="shift")]
    return nodes, inits


def _conv_ln_conv(opset: int = 14, affine: bool = True, axis: int = 1) -> onnx.ModelProto:
    """Conv 4 -> 8 -> channels-first LayerNorm written out -> Conv 1x1 8 -> 4."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (C, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, C, 1, 1)).astype(np.float32), "w2")]
    ln, ln_inits = _written_ln("c", "l", axis, opset, [C, 1, 1] if affine else None)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]), *ln,
             helper.make_node("Conv", ["l", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "ln_cf", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, MAP)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, MAP)], inits + ln_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tokens_ln(opset: int = 14, affine: bool = True, square: str = "Pow") -> onnx.ModelProto:
    """MatMul 8 -> 8 on N x T x C tokens -> LayerNorm over C written out -> MatMul 8 -> 3."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (C, C)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.4, (C, 3)).astype(np.float32), "w2")]
    ln, ln_inits = _written_ln("t", "l", -1, opset, [C] if affine else None, square)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["t"], name="fc1"), *ln,
             helper.make_node("MatMul", ["l", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "ln_tokens", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, TOKENS)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5, 3])], inits + ln_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _same_function(model: onnx.ModelProto, rewritten: onnx.ModelProto, shape: list[int]) -> None:
    onnx.checker.check_model(rewritten)
    onnx.shape_inference.infer_shapes(rewritten, check_type=True, strict_mode=True)
    x = samples(shape, n=1, seed=2)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [13, 14, 18])
@pytest.mark.parametrize("affine", [True, False])
def test_a_channels_first_layer_norm_is_one_unit_between_transposes(opset, affine):
    model = _conv_ln_conv(opset, affine)
    if opset < 17:
        model.ir_version = 7  # TorchScript's opset-14 exports
    rewritten = layer_norms(model)
    assert rewritten.ir_version >= 8
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Transpose", "LayerNormalization", "Transpose", "Conv"]
    ln = rewritten.graph.node[2]
    assert [a.f for a in ln.attribute if a.name == "epsilon"] == [pytest.approx(1e-6)]
    assert max(o.version for o in rewritten.opset_import if o.domain == "") >= 17
    _same_function(model, rewritten, MAP)


@pytest.mark.parametrize("square", ["Pow", "Mul"])
@pytest.mark.parametrize("affine", [True, False])
def test_a_layer_norm_over_the_last_axis_is_one_node(affine, square):
    model = _tokens_ln(14, affine, square)
    rewritten = layer_norms(model)
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "LayerNormalization", "MatMul"]
    _same_function(model, rewritten, TOKENS)


def test_a_deviation_read_outside_the_layer_norm_leaves_it_written_out():
    model = _conv_ln_conv()
    model.graph.output.append(helper.make_tensor_value_info("d", onnx.TensorProto.FLOAT, None))
    assert "LayerNormalization" not in [n.op_type for n in layer_norms(model).graph.node]


def test_a_normalisation_over_a_middle_axis_is_left_written_out():
    """Over H of N x C x H x W: neither trailing nor channels-first."""
    model = _conv_ln_conv(affine=False, axis=2)
    assert [n.op_type for n in layer_norms(model).graph.node] == [n.op_type for n in model.graph.node]


def test_a_scale_varying_along_another_axis_is_not_the_layer_norms():
    """A ``[C, 6, 1]`` constant scales H too: the normalisation is a unit, the product stays after it."""
    model = _conv_ln_conv()
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.CopyFrom(numpy_helper.from_array(np.ones((C, 6, 1), np.float32) * 1.5, "w"))
    rewritten = layer_norms(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Transpose", "LayerNormalization", "Transpose",
                                                         "Mul", "Add", "Conv"]
    _same_function(model, rewritten, MAP)


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8"])
def test_the_written_out_layer_norm_is_one_cpu_island(target):
    """Accelerator, the LayerNorm on the CPU, accelerator: three subgraphs, not one boundary per node."""
    model = _conv_ln_conv()
    check = npuflow.check(model, target)
    q = npuflow.quantize(model, [{"x": x} for x in samples(MAP, n=8)], target=target)
    compiled = npuflow.compile(q.model, target)
    devices = [sg["device"] for sg in compiled.manifest["subgraphs"]]
    assert len(devices) == 3 and devices[1] == "CPU" and devices[0] == devices[2] != "CPU"
    assert check.node("conv2").device == "NPU"
    x = samples(MAP, n=1, seed=3)[0]
    got = npuflow.Session(compiled).run({"x": x})["y"]
    assert np.array_equal(got, npuflow.Session(compiled, fuse=False).run({"x": x})["y"])
    want = run(model, {"x": x})[0]
    cos = float(np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cos > 0.99


def _flattened_tokens_ln(opset: int = 13) -> onnx.ModelProto:
    """Conv 4 -> 8 on a dynamic N x 4 x H x W map, flattened as paddle2onnx writes it
    (``Reshape(x, Concat(Shape(x)[0:2], [-1]))``), transposed to tokens, LayerNorm over C written
    out, MatMul 8 -> 3: PP-OCRv4 rec's SVTR neck in small."""
    rng = np.random.default_rng(5)
    ints = {"start": [0], "stop": [2], "rest": [-1]}
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (C, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.4, (C, 3)).astype(np.float32), "w2"),
             *[numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]]
    ln, ln_inits = _written_ln("t", "l", -1, opset, [C])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["c"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "start", "stop"], ["nc"], name="slice"),
             helper.make_node("Concat", ["nc", "rest"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["c", "target"], ["flat"], name="flatten"),
             helper.make_node("Transpose", ["flat"], ["t"], name="tokens", perm=[0, 2, 1]), *ln,
             helper.make_node("MatMul", ["l", "w2"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "ln_flat", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                               ["N", 4, "H", "W"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", "T", 3])],
                              inits + ln_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_layer_norm_after_a_computed_reshape_of_a_dynamic_map_is_one_node(tmp_path, monkeypatch):
    """ONNX's ``Reshape``-13 inference gives the flattened tokens no rank (the target is computed);
    ONNX Runtime's symbolic shape inference does (``value_info.ranked_dims``), so the LayerNorm over
    them folds in the dynamic graph as in a fixed one.  Its partial result is used as it is: nothing
    is written into the working directory (``infer_shapes`` saves the model there when it stops)."""
    model = _flattened_tokens_ln()
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph.value_info
    assert "t" not in {vi.name for vi in inferred if vi.type.tensor_type.HasField("shape")}
    monkeypatch.chdir(tmp_path)
    rewritten = layer_norms(model)
    assert not list(tmp_path.iterdir())
    assert [n.op_type for n in rewritten.graph.node if n.op_type in ("LayerNormalization", "Sqrt")] == \
        ["LayerNormalization"]
    onnx.checker.check_model(rewritten)
    for hw in ([6, 6], [5, 11]):
        x = samples([2, 4, *hw], n=1, seed=2)[0]
        np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_a_layer_norm_whose_input_no_inference_ranks_stays_written_out():
    """Behind an operator of an unknown domain neither ONNX nor ONNX Runtime's symbolic inference
    (run without guessing ranks) gives the tokens a rank: the chain stays as it is, no error."""
    model = _flattened_tokens_ln()
    tokens = next(n for n in model.graph.node if n.name == "tokens")
    tokens.output[0] = "t_raw"
    opaque = helper.make_node("Opaque", ["t_raw"], ["t"], name="opaque", domain="com.example")
    nodes = list(model.graph.node)
    nodes.insert(nodes.index(tokens) + 1, opaque)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    rewritten = layer_norms(model)
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]
