"""Round 13 of new-user flows, open item 3: ``NPF_MODEL_DYNAMIC_SHAPE``'s hint wrote
``--input-shape x 1x3xNxN`` ("N: the size you deploy") for a model whose batch dimension is itself
named ``N``, so the N in the example read as the batch.  The example now writes numbers: 1 for a
dynamic batch, and for every other open dimension a size no fixed dimension of those inputs has.
"""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from npuflow import model as model_io
from npuflow.cli.app import main
from npuflow.errors import NpuflowError


def _net(dims: list) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _error(dims: list) -> NpuflowError:
    with pytest.raises(NpuflowError) as exc:
        model_io.load(_net(dims))
    assert exc.value.code == "NPF_MODEL_DYNAMIC_SHAPE"
    return exc.value


def test_batch_named_n_gets_an_example_of_numbers(tmp_path, capsys):
    e = _error(["N", 3, "H", "W"])
    assert "'x' dimension(s) #0 (N), #2 (H), #3 (W)" in e.message
    assert "--input-shape x 1x3x64x64" in e.hint and "each 64 stands for an open dimension" in e.hint
    assert "xN" not in e.hint and "N:" not in e.hint
    path = tmp_path / "dyn.onnx"
    onnx.save(_net(["N", 3, "H", "W"]), path)
    assert main(["check", str(path), "-t", "cpu-int8"]) == 2
    err = capsys.readouterr().err
    assert "--input-shape x 1x3x64x64" in err and "Traceback" not in err


def test_example_size_is_none_of_the_fixed_dimensions():
    """A fixed 64 beside the open dimensions: the example's size is another number, so which
    numbers to replace stays readable."""
    e = _error(["N", 64, "H", "W"])
    assert "--input-shape x 1x64x32x32" in e.hint and "each 32 stands for" in e.hint
