"""A model with a custom operator, end to end: register -> check -> quantize -> compile -> run.

    pip install -e '.[ort]' && python examples/custom_op.py

The bundled MNIST CNN gets a custom activation in place of its second ReLU: the node
``com.example:CappedRelu`` (attribute ``cap``), which no runtime knows.  Registering a numpy
implementation with :func:`npuflow.register_op` is all every stage needs: ``check`` places the
node on the CPU ("custom op"), ``quantize`` keeps it in float between Q/DQ, ``compile`` puts it in
a CPU subgraph between two DPU subgraphs, and the ``Session`` runs it.  Prints the placement, the
subgraphs and the accuracy of the float and compiled models on the bundled labelled digits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing, too

import npuflow  # noqa: E402

TARGET = "DPUCZDX8G_ISA1_B4096"
MEAN, STD = 0.1307, 0.3081  # the CNN's input normalisation on [0, 1] pixels (examples/make_example_data.py)


@npuflow.register_op("CappedRelu", domain="com.example", attrs={"cap": float})
def capped_relu(x: np.ndarray, cap: float = 6.0) -> np.ndarray:
    """The user's operator: ReLU capped at ``cap`` (any numpy code works here)."""
    return np.clip(x, 0.0, cap)


def with_custom_op(source: Path, out: Path) -> Path:
    """The MNIST CNN with its second ReLU replaced by ``com.example:CappedRelu``."""
    model = onnx.load(source)
    relu = [n for n in model.graph.node if n.op_type == "Relu"][1]
    relu.op_type, relu.domain, relu.name = "CappedRelu", "com.example", "capped_relu"
    relu.attribute.append(onnx.helper.make_attribute("cap", 20.0))
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(model, out)
    return out


def digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.load(HERE / "mnist" / "eval_images.npy")[:count].astype(np.float32) / 255.0
    labels = np.load(HERE / "mnist" / "eval_labels.npy")[:count]
    return ((images - MEAN) / STD).astype(np.float32), labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=300, help="labelled digits to evaluate (max 968)")
    args = parser.parse_args(argv)
    images, labels = digits(32 + args.eval)  # 32 calibrate, the rest evaluate
    with tempfile.TemporaryDirectory() as tmp:
        model = with_custom_op(HERE / "mnist_cnn.onnx", Path(tmp) / "mnist_custom.onnx")

        report = npuflow.check(model, TARGET)
        for node in report.nodes:
            if node.device == "CPU":
                print(f"check: {node.name} on the CPU: {node.reasons[0]}")

        quantized = npuflow.quantize(model, [x[None] for x in images[:32]], TARGET)
        print(f"quantize: output cosine {quantized.report.outputs['logits']:.4f} on the report samples")

        npuf = Path(tmp) / "mnist_custom.npuf"
        npuflow.compile(quantized.model, TARGET).save(npuf)
        session = npuflow.Session(npuf)
        print("compile: subgraphs " + ", ".join(f"{sg['name']} ({sg['device']})"
                                                 for sg in session.compiled.manifest["subgraphs"]))

        from npuflow.ort_session import open_session

        float_session = open_session(onnx.load(model))
        test, truth = images[32:32 + args.eval], labels[32:32 + args.eval]
        float_pred = [int(float_session.run(None, {"input": x[None]})[0].argmax()) for x in test]
        npuf_pred = [int(session.run({"input": x[None]})["logits"].argmax()) for x in test]
        print(f"accuracy on {len(test)} digits: float {np.mean(np.equal(float_pred, truth)):.1%}, "
              f"compiled {np.mean(np.equal(npuf_pred, truth)):.1%}; "
              f"compiled agrees with float on {np.mean(np.equal(npuf_pred, float_pred)):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
