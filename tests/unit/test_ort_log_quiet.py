"""ONNX Runtime's own error log must not reach the user beside npuflow's coded error.

A run that ONNX Runtime fails (here a token id past an embedding table) is reported by the runtime
as ``NPF_RUNTIME_SUBGRAPH_FAILED`` carrying ORT's message; ORT used to print its own red
``[E:onnxruntime:...]`` line on stderr above it (new-user round 13).  ORT logs from C++, so the
check runs in a child process and reads its stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from npuflow.ort_session import open_session

    table = numpy_helper.from_array(np.zeros((50, 4), np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [table])
    session = open_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    try:
        session.run(None, {"ids": np.array([1, 99, 2])})
    except Exception as exc:
        print("refused:", exc)
""")


def test_a_failing_run_prints_no_onnxruntime_log_line():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "idx=99" in done.stdout  # ORT's message still reaches the caller
    assert "onnxruntime" not in done.stderr, done.stderr
