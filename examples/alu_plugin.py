"""A sample compiler plugin: an "ALU engine" beside the accelerator that runs Softmax and Sigmoid.

Many NPUs pair their convolution engine with a small vector unit for the operators the main
engine lacks; Vitis AI lets users plug such engines into the compiler.  This plugin claims every
Softmax and Sigmoid node, stores a small kernel table as its payload, simulates the engine with
ONNX Runtime on the subgraph (so the compiled model equals ONNX Runtime on the quantized model),
and gives the performance model a cost: 16 lanes at 500 MHz, 8 cycles per exp.

Use it (``npuflow compile --plugin alu`` finds it once a package registers it through the
``npuflow.plugins`` entry point group; in Python, register it yourself)::

    import npuflow, npuflow.plugins
    from alu_plugin import AluPlugin
    npuflow.plugins.register_plugin(AluPlugin)
    npuflow.compile("quantized_model.onnx", "DPUCZDX8G_ISA1_B4096", plugins=["alu"]).save("m.npuf")
    npuflow.Session("m.npuf").run({"input": x})

    python examples/alu_plugin.py        # compiles and runs the bundled MNIST CNN with it
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx

from npuflow.plugins import Plugin
from npuflow.ort_session import open_session
from npuflow.runtime.executors import cpu_level


class AluPlugin(Plugin):
    name = "alu"
    device = "ALU"
    #: the operators the engine has, and the cycles per element each costs on one lane
    CYCLES = {"Softmax": 8, "Sigmoid": 8}
    LANES = 16
    CLOCK_MHZ = 500

    def claims(self, model, target):
        return {n.name for n in model.graph.node if n.op_type in self.CYCLES}

    def compile(self, subgraph):
        kernels = [{"op": n.op_type, "name": n.name} for n in subgraph.graph.node if n.op_type in self.CYCLES]
        return json.dumps({"kernels": kernels}).encode()

    def runner(self, subgraph, payload):
        kernels = json.loads(payload)["kernels"]
        assert kernels, "a subgraph without kernels"
        session = open_session(subgraph, level=cpu_level(subgraph), threads=1)
        outputs = [o.name for o in subgraph.graph.output]

        def run(feeds):
            return dict(zip(outputs, session.run(outputs, feeds)))

        return run

    def estimate_ms(self, subgraph, target):
        subgraph = onnx.shape_inference.infer_shapes(subgraph)  # the shapes of the tensors inside it
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in [*subgraph.graph.input, *subgraph.graph.output, *subgraph.graph.value_info]}
        cycles = 0
        for n in subgraph.graph.node:
            if n.op_type in self.CYCLES:
                elements = math.prod(shapes.get(n.output[0]) or [1])
                cycles += self.CYCLES[n.op_type] * math.ceil(elements / self.LANES)
        return cycles / (self.CLOCK_MHZ * 1e3)


def main() -> None:
    from pathlib import Path

    import npuflow
    import npuflow.plugins

    here = Path(__file__).parent
    npuflow.plugins.register_plugin(AluPlugin)
    images = np.load(here / "mnist" / "eval_images.npy")[:16].astype(np.float32)
    calib = [((x[None] / 255.0 - 0.1307) / 0.3081).astype(np.float32) for x in images]
    model = onnx.load(here / "mnist_cnn.onnx")
    logits = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("Softmax", [logits.name], ["probabilities"], axis=1, name="softmax"))
    model.graph.output[0].name = "probabilities"  # the classifier now ends in probabilities, on the ALU
    q = npuflow.quantize(model, calib[:8], "DPUCZDX8G_ISA1_B4096")
    compiled = npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096", plugins=["alu"])
    for sg in compiled.manifest["subgraphs"]:
        print(sg["name"], sg["device"], sg["engine"])
    compiled.save("mnist_alu.npuf")
    print(npuflow.Session("mnist_alu.npuf").run({"input": calib[8]}))


if __name__ == "__main__":
    main()
