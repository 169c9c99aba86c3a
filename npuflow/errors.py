"""The error catalog: every user-facing failure has a stable code, a message and a hint.

Codes follow ``NPF_<AREA>_<NAME>`` and never change meaning once released, so scripts and
support threads can rely on them (the role of Vitis AI's Appendix A error IDs).  Library code
raises :class:`NpuflowError` with a code and the values the message needs; the CLI prints
``ERROR [CODE] message`` plus the hint and exits non-zero, without a traceback.  In Python,
``str(exc)`` is ``[CODE] message`` and the hint on the next line, so a script that does not catch
the error still shows what to do; a message that quotes another error takes :func:`error_text`.

``docs/errors.md`` is generated from :data:`CATALOG` (``python -m npuflow.errors > docs/errors.md``)
and a test keeps it in sync.

Each area has its own block below so that work on different stages touches different lines.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class ErrorSpec:
    """One catalog entry: ``message`` and ``hint`` are ``str.format`` templates."""

    code: str
    message: str
    hint: str


def _specs(*entries: tuple[str, str, str]) -> dict[str, ErrorSpec]:
    return {code: ErrorSpec(code, message, hint) for code, message, hint in entries}


# --- generic / CLI -------------------------------------------------------------------------
_GENERIC = _specs(
    ("NPF_IO_WRITE_FAILED", "cannot write {path}: {reason}",
     "Check that the output folder exists, is writable and has free space."),
)

# --- model loading -------------------------------------------------------------------------
_MODEL = _specs(
    ("NPF_MODEL_NOT_FOUND", "model file {path} does not exist",
     "Check the path; relative paths are resolved from the current directory."),
    ("NPF_MODEL_NOT_ONNX", "{path} is not an ONNX model: {reason}",
     "Pass an .onnx file exported by torch.onnx.export, tf2onnx, paddle2onnx or similar."),
    ("NPF_MODEL_CORRUPT", "{path} is truncated or corrupt: {reason}",
     "Re-export or re-download the model; the file does not parse as a complete ONNX protobuf."),
    ("NPF_MODEL_INVALID", "the model fails ONNX validation: {reason}",
     "Run onnx.checker.check_model on the file to see the offending node and fix the exporter."),
    ("NPF_MODEL_OPSET_UNSUPPORTED", "model opset {opset} is outside the supported range [{low}, {high}]",
     "Re-export the model with an opset in the supported range; the newest is the newest one both the "
     "installed onnx and onnxruntime support (upgrade both for newer opsets)."),
    ("NPF_MODEL_CUSTOM_OP", "the model uses {count} custom operator(s) with no implementation registered: {ops}",
     "Register each in Python before loading the model: @npuflow.register_op('OpType', domain='your.domain') "
     "on a numpy function, npuflow.register_op_library('libops.so', domain='your.domain') for an ONNX Runtime "
     "custom-op library (docs/custom-ops.md), or from a package through the 'npuflow.ops' entry point; or "
     "re-export the model with standard ops."),
    ("NPF_MODEL_QUARK_FORMAT", "the model is quantized by AMD Quark in a format no npuflow target runs: {formats}",
     "npuflow compiles integer models in standard QuantizeLinear/DequantizeLinear: quantize the float model "
     "with `npuflow quantize -t TARGET`, or in Quark with XINT8_QCONFIG (power-of-two scales: every target), "
     "A8W8_QCONFIG (float scales: cpu-int8, bernoulli2) or A16W8_QCONFIG (16-bit activations: cpu-int8)."),
    ("NPF_CUSTOM_OP_BAD_REGISTRATION", "cannot register custom op {op!r}: {reason}",
     "register_op(op_type, fn, domain='com.example', inputs=('float',), outputs=('float',), attrs={{'beta': float}}); "
     "register_op_library('path/libops.so', domain='com.example')."),
    ("NPF_CUSTOM_OP_FAILED", "custom op {op} ({source}) failed: {reason}",
     "Fix the registered function: it is called with numpy arrays in the node's input order and the "
     "node's attributes as keywords, and must return one array per declared output."),
    ("NPF_MODEL_DYNAMIC_SHAPE", "{count} input(s) with unresolved dynamic dimensions: {inputs}",
     "Freeze them with e.g. {examples}: each {size} stands for an open dimension named above (a dynamic batch "
     "is 1); write the size you deploy there, one option per input."),
    ("NPF_MODEL_BAD_INPUT_SHAPE", "bad input shape {value!r}: {reason}",
     "Write shapes as dimensions joined by 'x', e.g. --input-shape images 1x3x224x224."),
    ("NPF_MODEL_FIXED_INPUT_SHAPE", "input {name!r} is fixed at {fixed} in the model, and its shapes were computed "
     "for that size: {asked} (dimension(s) {at} changed) does not fit them: {reason}",
     "Ask only the dimensions the model leaves dynamic.  Where the message names a node, the model itself "
     "holds the size there (an export traced at that size): export the model at the size wanted, or with that dimension "
     "dynamic (torch.onnx.export dynamic_axes), and quantize that export; a quantized model keeps it too.  "
     "From npuflow.quantize: q.model is frozen at the shape it was quantized at; "
     "npuflow.compile(q, target, input_shapes=...) (the QuantizedModel itself) and the saved "
     "quantized_model.onnx keep the dimensions the source left dynamic, not the ones it fixes."),
    ("NPF_MODEL_INPUT_SIZE_UNSUPPORTED", "the model does not compute at the input size asked ({asked}, on "
     "dimensions the model leaves dynamic): {reason}",
     "Ask a size the model computes at: a network that downsamples and then joins two scales (U-Net skips, "
     "YOLO/FPN necks) needs sizes divisible by its total stride (32 for most detectors); the size it was exported or "
     "trained at works; a dynamic batch no --input-shape sets is 1, and a model that needs another (one reshaped "
     "to [4, -1]) takes it as --input-shape NAME DIMS.  If it fails at every size, run onnx.checker.check_model on "
     "the file."),
    ("NPF_MODEL_UNKNOWN_INPUT", "the model has no input named {name!r}",
     "The model's inputs are: {inputs}."),
    ("NPF_MODEL_UNKNOWN_TENSOR", "the model has no tensor named {name!r} to cut at",
     "Name a node output, an initializer or a graph input of the model (Netron or onnx.load(...).graph "
     "shows them)."),
    ("NPF_MODEL_BAD_PROBE_VALUE", "bad {option} {value!r}: {reason}",
     "Write NAME=VALUE with one of the model's input names, e.g. sr=16000 (numbers joined by ',' for a tensor)."),
    ("NPF_MODEL_IR_VERSION", "the model's IR version {found} is outside the supported range [{low}, {high}]",
     "The file is damaged or was written by an unknown tool; re-export it (torch.onnx.export, tf2onnx, ...) "
     "or upgrade onnx for a newer IR version."),
    ("NPF_MODEL_DUPLICATE_NAME", "tensor {tensor!r} is written twice: by {first} and by {second}",
     "Every tensor of an ONNX graph must have one writer; rename one of them (the file is damaged or the "
     "exporter is faulty)."),
    ("NPF_MODEL_EXTERNAL_DATA", "external data of tensor {tensor!r} at {location!r} is refused: {reason}",
     "Keep the weights file(s) next to the model, inside {folder}, and name them by a relative path "
     "(onnx.save_model(..., save_as_external_data=True) does); nothing outside that folder is read."),
    ("NPF_MODEL_TENSOR_TOO_LARGE",
     "tensor {tensor!r} would have shape {shape} ({elements} elements), more than the limit of {limit}",
     "Check the input shape (--input-shape / input_shape) for a typo; to allow larger tensors, raise the limit "
     "with the environment variable {env}."),
    ("NPF_MODEL_BAD_LIMIT", "environment variable {name}={value!r} is not a positive integer",
     "Set it to the most elements one tensor may have, e.g. {name}=4294967296, or unset it."),
    ("NPF_MODEL_SHAPE_PROBE_FAILED",
     "the shape probe (one ONNX Runtime run for the {count} tensor shape(s) shape inference leaves unknown, "
     "e.g. {first!r}) failed with inputs {feeds}: {reason}",
     "Give the probe a value the model accepts for input {input!r} (or the input named in the error): "
     "--probe-value {input}=VALUE on check/quantize, or probe_values={{'{input}': VALUE}} in npuflow.model.load."),
)

# --- targets -------------------------------------------------------------------------------
_TARGET = _specs(
    ("NPF_TARGET_UNKNOWN", "unknown target {value!r}",
     "{suggestion}Run `npuflow targets` for the list; a target can be named by name, fingerprint or arch.json."),
    ("NPF_TARGET_BAD_ARCH_JSON", "{path} is not a usable arch.json: {reason}",
     "An arch.json holds a JSON object with a \"target\" (name) or \"fingerprint\" key."),
    ("NPF_TARGET_BAD_FILE", "target file {path} is invalid: {reason}",
     "Fix the target description; docs/targets.md lists every field."),
    ("NPF_TARGET_FORMULA_BOUND", "target limit formula {expr!r} cannot be evaluated: {reason}",
     "Limit formulas compare layer and hardware sizes; keep their values within 4096 bits and use no strings in arithmetic."),
)

# --- checker -------------------------------------------------------------------------------
_CHECK = _specs(
    ("NPF_CHECK_GRAPHVIZ_MISSING", "cannot write a {format} picture: Graphviz's `dot` program is not installed",
     "Install Graphviz (Debian/Ubuntu: apt-get install graphviz), or leave out --format: the .gv file is always written."),
    ("NPF_CHECK_GRAPHVIZ_FAILED", "Graphviz could not render the {format} picture: {reason}",
     "Run `dot -T{format}` on the .gv file to see the problem, or leave out --format."),
)

# --- quantizer -----------------------------------------------------------------------------
_QUANT = _specs(
    ("NPF_QUANT_BAD_CONFIG", "invalid quantization config: {reason}",
     "docs/quantization.md lists every field and its allowed values."),
    ("NPF_QUANT_CONTROL_FLOW_ONLY",
     "nothing in the model's main graph can be quantized: its computation sits inside the branches/bodies "
     "of control-flow node(s) {nodes}, which run in float on the CPU",
     "npuflow quantizes and compiles the main graph only. For an If, fix the input the condition reads for "
     "this deployment (--freeze-input NAME=VALUE on check/quantize, e.g. --freeze-input sr=16000; npuflow "
     "build: model_parameters.freeze_input: 'sr=16000'; Python: npuflow.model.freeze_inputs) so the branch is "
     "inlined. A Scan or Loop over the data (scikit-learn's nearest-neighbour distances) has nothing to "
     "freeze: export the model without it, or run the float model as it is."),
    ("NPF_QUANT_NO_PLAN", "{action} needs the quantizer's plan, and this model has none: it was replaced after "
     "quantize (QAT trains the parameters the plan made)",
     "Run it on the QuantizedModel that npuflow.quantize returned (before QAT), or quantize again."),
    ("NPF_QUANT_CONFIG_CONFLICT", "invalid quantization settings for {where}: {reason}",
     "Change one of the conflicting settings; docs/quantization.md lists the rules."),
    ("NPF_QUANT_BITS_UNSUPPORTED", "{bits}-bit {kind} quantization for {where} is not supported by target {target}",
     "The target supports {supported}-bit tensors (4-bit is allowed for weights only); pick one of those."),
    ("NPF_QUANT_CONFIG_FILE", "cannot read quantization config {path}: {reason}",
     "Pass a JSON or YAML file (.json, .yaml, .yml) written by `QuantConfig.dump` or by hand."),
    ("NPF_QUANT_UNKNOWN_LAYER", "{field} names {name!r}, which matches no node of the model",
     "{suggestion}Use node names of the optimized float model (optimized_float_model.onnx), e.g. {examples}."),
    ("NPF_QUANT_UNKNOWN_OP_TYPE", "op_types names {name!r}, which is not an ONNX operator type",
     "{suggestion}Op types are spelled as in ONNX (Conv, Gemm, MatMul, Add, ...), case included."),
    ("NPF_QUANT_BAD_PRECISION", "precision {value!r} is not one of float, int16",
     "Mixed precision raises layers to float (any target, runs on the CPU) or int16 (targets with a 16-bit datapath)."),
    ("NPF_QUANT_CALIB_EMPTY", "the calibration set {source} has no samples",
     "Give at least one sample (100 or more representative samples are recommended)."),
    ("NPF_QUANT_SAVE_NEEDS_FOLDER", "{path} names an .onnx file, but QuantizedModel.save writes a folder of five "
     "files (quantized_model.onnx, the two float models, quant_info.json, quant_report.json)",
     "Pass a folder: quantized.save('out'); out/quantized_model.onnx is the one file ONNX Runtime's "
     "quantize_static writes as its model_output."),
    ("NPF_QUANT_CALIB_SOURCE", "cannot read calibration data {source}: {reason}",
     "Pass a folder of .npy files (or .npz, one per sample), a folder of raw numpy.tofile files with calib_shapes "
     "in the config, one .npy/.npz of stacked samples, a dataset.txt listing .npy files, or an iterable of "
     "arrays/dicts."),
    ("NPF_QUANT_CALIB_NONFINITE", "calibration sample {sample} input {input!r} contains NaN or Inf",
     "Fix or drop that sample; calibration ranges must come from finite values."),
    ("NPF_QUANT_CALIB_ALL_ZERO",
     "{count} quantized tensor(s) held only zeros on all {samples} calibration sample(s) ({tensors}): their "
     "scale is a guess (the unit scale), and the ranges after them come from samples that never reached them",
     "Calibrate on samples that exercise the whole model (every class of a classifier, every branch); "
     "`keep_float` in the config keeps such nodes in float."),
    ("NPF_QUANT_SHARED_SCALE_RANGE",
     "{op} node {node!r} quantizes its inputs on one scale, and their calibrated ranges differ {ratio}x ({ranges}): "
     "{narrow!r} keeps about {codes} of the {levels} codes, so most of its detail is rounded away",
     "Normalise the inputs to similar ranges before the {op} (scale the wide one down, e.g. a log or a division "
     "by its typical size, in the model), or keep the node in float (`keep_float: [{node}]` in the quantize config), "
     "and judge the result on held-out samples: the similarity on calibration samples can stay high."),
    ("NPF_QUANT_CALIB_LOOKS_RANDOM",
     "calibration input {input!r} looks like random noise, not images: neighbouring pixels correlate {correlation} "
     "(mean of {samples} sample(s); photos, scans and rendered text: 0.6 or more); ranges calibrated on noise can "
     "fit real inputs badly, and the similarity quantize reports is measured on these same samples",
     "Calibrate on real inputs preprocessed as in deployment (100 or more recommended). If the noise is "
     "deliberate (a model with random weights), ignore this warning."),
    ("NPF_QUANT_NONFINITE_TENSOR",
     "tensor(s) {tensors} held infinities or NaN on the calibration data and the quantizer cannot keep them "
     "float: no 8-bit grid represents them",
     "Check the calibration samples for inf/NaN (np.isfinite), or replace the infinite constants in the model "
     "(e.g. a mask's -inf) by a finite value, or name the nodes that read them in `keep_float` (docs/quantization.md)."),
    ("NPF_QUANT_CALIB_MISMATCH", "calibration sample {sample} does not fit the model: {reason}",
     "Samples must have the model's input names and dtypes and the shape it is quantized at (--input-shape, "
     "the model's static shape, or the first sample's); only the dimensions the source model leaves dynamic "
     "may vary (OCR line widths): by default where no --input-shape fixes them (a batch also where one does), "
     "`calib_dynamic_dims: true` in the config also where one does, `false` nowhere."),
    ("NPF_QUANT_ALREADY_QUANTIZED", "the model is already quantized: {count} quantize/dequantize or integer "
     "node(s) ({ops}; e.g. node {node!r})",
     "Quantizing it again would stack a second set of steps on the first. Compile it as it is "
     "(`npuflow compile MODEL -t TARGET` legalises ONNX Runtime, Quark, NNCF and Brevitas models or names "
     "what the target cannot run), or quantize the float model it was made from: the only way for a model "
     "quantized dynamically (DynamicQuantizeLinear, DynamicQuantizeLSTM: scales computed at run time), which "
     "compile refuses."),
    ("NPF_QUANT_NON_TENSOR_OUTPUT",
     "model output {output!r} is a {kind}, not a tensor (made by {op}): the quantizer scores every output as a tensor",
     "Export the model with tensor outputs only: skl2onnx writes its class probabilities as a ZipMap sequence of "
     "maps unless given options={{'zipmap': False}}; or remove the node that builds the {kind}."),
    ("NPF_QUANT_LOW_SIMILARITY",
     "the quantized model's output {output} has cosine similarity {cosine} to the float model on {samples}, "
     "below min_output_cosine {threshold}; largest drops at {nodes}",
     "Try, in this order: another activation calibration method (config `activation: {{method: ...}}`, "
     "see docs/quantization.md), `include_cle: true`, `fast_finetune: {{method: adaquant}}`, then "
     "`npuflow analyze sensitivity` / `analyze mixed-precision` to keep the worst layers in float "
     "(`keep_float`). Check that the calibration samples are preprocessed as in deployment. To accept "
     "the loss, lower `min_output_cosine` in the quantization config (npuflow build: its `npuflow:` section)."),
    ("NPF_QUANT_OUTPUT_CHANNEL",
     "the quantized model's output {output} has cosine similarity {whole} to the float model on {samples}, but "
     "channel(s) {channels} of its axis {axis} ({axis_size} channels) fall below min_output_cosine {threshold}: "
     "channels of a larger scale carry the whole output's cosine and hide them",
     "If the model concatenates values of different scales into {output} (an angle beside a score), keep the "
     "node that produces {output} and its inputs' producers in float (config `keep_float`; `npuflow analyze "
     "sensitivity` names them), or split the output so that each part has a grid of its own; calibrate on "
     "samples like deployment's, where that channel takes its real values. If {output} holds class scores "
     "along its last axis, read by their argmax, from a head npuflow does not recognise (a Gemm, MatMul or 1x1 "
     "Conv followed only by bias adds, means and flattens is read as one), export it with a name containing `logits` (torch.onnx.export(..., output_names=['logits'])): quantize then "
     "judges how many labels change (NPF_QUANT_LABEL_MARGIN) instead of its channels. To accept it, lower "
     "`min_output_cosine` in the quantization config."),
    ("NPF_QUANT_WORST_SAMPLE",
     "the quantized model's output {output} has cosine similarity {pooled} to the float model pooled over {samples}, "
     "but {worst} on one of them alone (number {sample}, counting from 0), below min_output_cosine {threshold}: the pooled figure hides one "
     "input's loss, and unseen inputs like it fare as badly",
     "Look at that sample: if deployment sees inputs like it, calibrate on more of them; try what "
     "NPF_QUANT_LOW_SIMILARITY's hint lists, keep the layers with the largest drops in float (`keep_float`; "
     "`npuflow analyze sensitivity` names them) or in int16 (`npuflow analyze mixed-precision`), or use a target "
     "with a finer grid. To accept it, lower `min_output_cosine` in the quantization config."),
    ("NPF_QUANT_OUTPUT_ERROR",
     "the quantized model's output {output} holds one or a few values per sample, which no cosine judges (one "
     "value's is +-1); its largest error on {samples} is {error}, {share} of its range {range}, above {limit}",
     "Calibrate on samples that cover the values deployment sees (a click model's positives as well as its "
     "negatives); try what NPF_QUANT_LOW_SIMILARITY's hint lists, or keep the layers before {output} in float "
     "(`keep_float`; `npuflow analyze sensitivity` names them). A probability is also read as a label at 0.5 "
     "(NPF_QUANT_LABEL_MARGIN)."),
    ("NPF_QUANT_PROBABILITY_ERROR",
     "the quantized model's output {output} holds probabilities (float values in [0, 1]) that pass "
     "min_output_cosine {threshold} on {samples} by a cosine around zero, which credits them their offset, but not "
     "around their mean or by their largest error (above {limit}): {figures}",
     "A score compared with a threshold (0.5) moves by that much. Keep the Sigmoid/Softmax and the layers that "
     "feed {output} in float (config `keep_float`; `npuflow analyze sensitivity` names them), try a 16-bit grid "
     "there, or calibrate on more samples like deployment's; check the task metric (detections kept) on "
     "held-out data before shipping."),
    ("NPF_QUANT_LOW_SNR",
     "the quantized model's signal output {output} has cosine similarity {cosine} to the float model on {samples}, "
     "but a signal-to-noise ratio of {snr} dB to it, below min_output_snr_db {threshold}: the quantization error is "
     "audible in a waveform that a cosine near 1 calls close",
     "The ratio pools the samples' energies, so quiet frames weigh little and loud ones decide it. Try what "
     "NPF_QUANT_LOW_SIMILARITY's hint lists (another activation calibration method, `include_cle: true`, "
     "`fast_finetune`), keep the layers nearest the output in float (`keep_float`; `npuflow analyze sensitivity` "
     "names them) or in int16 (`npuflow analyze mixed-precision`), or use a target with a finer grid. To accept it, "
     "lower `min_output_snr_db` in the quantization config (0 turns this check off)."),
    ("NPF_QUANT_LABEL_MARGIN",
     "the label read from {tensor} by its {read_by} would change on about {estimated} of inputs like the {samples} "
     "(changed on {changed} of its {rows} rows there), and {rows} rows cannot rule out up to {bound} (inputs nearer "
     "a tie than any they hold): quantization moves the gap between its two leading values by {error} (root mean "
     "square), more than the whole gap on {near} of those rows (smallest gap {smallest}), so inputs near the "
     "decision boundary read another label; above max_label_change {limit}{sequences}",
     "Calibrate on more samples, and on ones like deployment's, including inputs the model is unsure about; keep "
     "the layers that compute {tensor} in float (config `keep_float`; `npuflow analyze sensitivity` names them) "
     "or in int16 (`npuflow analyze mixed-precision`), or use a target with a finer grid. To accept it, raise "
     "`max_label_change` in the quantization config (1 turns this check off)."),
)

# --- compiler / .npuf file -----------------------------------------------------------------
_COMPILE = _specs(
    ("NPF_COMPILE_NOT_QUANTIZED", "the model has no quantize/dequantize steps, so there is nothing to compile",
     "Compile the quantized_model.onnx written by `npuflow quantize`, not the float model. If it is one, no node "
     "of the model runs on the target's accelerator (quantize warned; `npuflow check MODEL -t TARGET` says why "
     "for each node): run the float model as it is."),
    ("NPF_COMPILE_FILE_NOT_FOUND", "compiled model {path} does not exist",
     "Check the path; `npuflow compile QUANTIZED.onnx --target T -o MODEL.npuf` writes one."),
    ("NPF_COMPILE_NOT_NPUF", "{path} is not an npuflow compiled model: {reason}",
     "Pass a .npuf file written by `npuflow compile`."),
    ("NPF_COMPILE_CORRUPT", "{path} is truncated or corrupt: {reason}",
     "The file was cut short or altered after it was written; compile the model again. Nothing was executed."),
    ("NPF_COMPILE_SELF_CHECK",
     "the program compiled for {target} fails the checks every load of a .npuf makes: {reason}",
     "This is a bug in npuflow's compiler, not in your model or file; nothing was written. Please report it with the "
     "quantized model. Meanwhile, quantizing the node the reason points at in float (quantize config `layers`, "
     "docs/quantization.md) or compiling for another target may avoid it."),
    ("NPF_COMPILE_VERSION", "{path} has .npuf format version {found}; this npuflow reads version {supported}",
     "Recompile the model with this npuflow version (`npuflow compile`), or use the npuflow that wrote it."),
    ("NPF_COMPILE_SCALES_UNSUPPORTED",
     "tensor {tensor!r} (node {node!r}) is quantized with {problem}; target {target} needs {needs} "
     "({count} of the model's {total} quantize/dequantize steps do not)",
     "Quantize the float model for this target with `npuflow quantize --target {target}`, or compile this "
     "model for a target whose arithmetic takes it (cpu-int8: float scales, any zero point, per-channel "
     "weights). ONNX Runtime writes zero points 0 with extra_options={{'ActivationSymmetric': True}}."),
    ("NPF_COMPILE_DYNAMIC_QUANTIZATION", "cannot compile a dynamically quantized model: {reason}",
     "Quantize the float model statically for this target: `npuflow quantize FLOAT.onnx --target {target} --calib "
     "DIR` (or ONNX Runtime's quantize_static with quant_format=QuantFormat.QDQ), then compile its "
     "quantized_model.onnx."),
    ("NPF_COMPILE_FOREIGN_UNSUPPORTED", "cannot legalise {op} node {node!r} into QDQ form: {reason}",
     "Re-export the model in QDQ format (ONNX Runtime: quant_format=QuantFormat.QDQ), or quantize the float "
     "model with `npuflow quantize`."),
    ("NPF_COMPILE_UNKNOWN_OP", "{path} has no op or node named {name!r}",
     "Close names: {close}. Ops are named by the ONNX nodes they were made from; `npuflow info {path} --json` "
     "lists every subgraph's ops and nodes."),
)

# --- runtime -------------------------------------------------------------------------------
_RUNTIME = _specs(
    ("NPF_RUNTIME_BAD_THREADS", "{option}={value!r} is not a number of threads (a whole number, at least 1)",
     "threads=1 runs each frame on one core (latency); for throughput run frames of one Session from several "
     "Python threads (it is thread-safe)."),
    ("NPF_RUNTIME_TARGET_MISMATCH",
     "the model was compiled for {compiled} (fingerprint {compiled_fp}), not for {target} (fingerprint {target_fp})",
     "Compile the quantized model for this target: `npuflow compile QUANTIZED.onnx --target {target}`."),
    ("NPF_RUNTIME_SUBGRAPH_FAILED", "ONNX Runtime failed running CPU subgraph {subgraph}: {reason}",
     "The input values are outside what the model accepts (a token id past the end of an embedding table, an "
     "index out of range); check the values given for each input."),
    ("NPF_RUNTIME_UNKNOWN_INPUT", "the model has no input named {name!r}",
     "The model's inputs are: {inputs}."),
    ("NPF_RUNTIME_BAD_FEED", "inputs must be a mapping from input name to array, not a {got}",
     "Pass a dict, e.g. session.run({{name: array}}) with the model's inputs: {inputs}."),
    ("NPF_RUNTIME_MISSING_INPUT", "input {name!r} was not given",
     "Pass every model input: {inputs}."),
    ("NPF_RUNTIME_INPUT_SATURATED", "input {name!r}: {fraction} of its values ({outside} of {total}, over {runs} "
     "run(s)) lie outside the range its first quantize step(s) represent, {calibrated}, and are clipped to the end "
     "codes; the values seen span {seen}",
     "Quantize again with calibration samples that cover the inputs you deploy on (their extremes included), or "
     "widen the input's range (calibration method 'minmax', or a larger percentile, in the quantize config); the "
     "similarity quantize reported was measured on the calibration samples and does not hold for these inputs."),
    ("NPF_RUNTIME_INPUT_DTYPE", "input {name!r} has dtype {got}, the model expects {expected}",
     "Convert the array, e.g. x.astype(numpy.{expected})."),
    ("NPF_RUNTIME_INPUT_SHAPE", "input {name!r} has shape {got}, the model expects {expected}",
     "Resize or reshape the data; the shape was frozen when the model was compiled (a dimension the quantized "
     "model leaves dynamic, a batch say, compiles at another size with {resize})."),
    ("NPF_RUNTIME_SHAPE_TOO_LARGE", "inputs of shape {got} fit none of the shapes the model was compiled for",
     "Compiled shapes: {shapes}. Compile one at least this large ({resize}) or cut the input."),
    ("NPF_RUNTIME_BAD_INPUT_FILE", "cannot read input {value!r}: {reason}",
     "Give inputs as NAME=FILE.npy (numpy.save), a FILE.npz holding every input by name (numpy.savez), or a "
     "folder of such files (one per sample) with -o OUTDIR."),
    ("NPF_RUNTIME_UNKNOWN_JOB", "runner {runner!r} has no pending job {job_id}",
     "Call wait() once with an id returned by execute_async() on the same runner."),
    ("NPF_RUNTIME_UNKNOWN_OP", "the model has no accelerator op made from node {name!r}",
     "Name the core ONNX node of an accelerator op (the 'name' of an op of an integer subgraph in "
     "CompiledModel.manifest; {count} ops, e.g. {some})."),
    ("NPF_RUNTIME_UNKNOWN_OUTPUT", "the model has no output named {name!r}",
     "The model's outputs are: {outputs} (pass None for all of them)."),
    ("NPF_RUNTIME_NO_TARGET", "{path} is a quantized ONNX model: it needs a target to be compiled for",
     "Pass the target, e.g. npuflow.ort.InferenceSession({path!r}, target='DPUCZDX8G_ISA1_B4096'), "
     "or pass a compiled .npuf."),
    ("NPF_RUNTIME_BAD_BUFFERS", "runner {runner!r} expects {expected} {kind} array(s) with shapes {shapes}, got {got}",
     "Allocate buffers from get_input_tensors()/get_output_tensors() (shape and dtype)."),
    ("NPF_RUNTIME_CLOSED", "the session of {path} was closed",
     "Open a new session (npuflow.Session(path)) to run the model again; close() frees the old one's memory."),
    ("NPF_RUNTIME_HASH_MISMATCH", "{path} does not have the pinned content: sha256 {got}, expected {expected}",
     "Deploy the .npuf the hash was taken from (sha256sum model.npuf), or pin the new file's hash."),
    ("NPF_ORT_UNSUPPORTED_METHOD", "npuflow.ort.InferenceSession has no {method}()",
     "{instead}."),
    ("NPF_ORT_EXPORT_STALE", "the .npuf {path} an exported ONNX model runs cannot be used: {reason}",
     "Keep the .npuf beside the exported ONNX model under the name it was exported from (the two are "
     "copied together), or export again from the .npuf you deploy: "
     "npuflow.ort_export.export('model.npuf', 'model_ort.onnx')."),
    ("NPF_ORT_EXPORT_NOT_SAVED", "{what} is not read from a .npuf file of its own, and the exported ONNX "
     "model's nodes name the file they run",
     "Save it first and export the file: compiled.save('model.npuf'); "
     "npuflow.ort_export.export('model.npuf', 'model_ort.onnx')."),
    ("NPF_ORT_EXPORT_SHAPES", "{path} holds {count} compiled shapes; an exported ONNX model has one",
     "Compile the shape you deploy alone (one --input-shape per input) and export that .npuf, or run the "
     "multi-shape .npuf with npuflow.Session."),
    ("NPF_ORT_EXTENSIONS_MISSING", "onnxruntime-extensions is not installed",
     "pip install onnxruntime-extensions (it runs npuflow's accelerator subgraphs as Python ops in ONNX Runtime)."),
    ("NPF_ORT_EXPORT_TYPE", "a subgraph boundary tensor of type {dtype} cannot cross into an ONNX Runtime Python op",
     "Run the .npuf with npuflow.Session or npuflow.ort.InferenceSession instead."),
)

# --- build config (YAML) -------------------------------------------------------------------
_BUILD = _specs(
    ("NPF_BUILD_CONFIG_NOT_FOUND", "build config {path} does not exist",
     "Pass the path of a YAML file; `npuflow build --template > my.yaml` writes a commented one."),
    ("NPF_BUILD_CONFIG_INVALID_YAML", "{path} is not a usable YAML build config: {reason}",
     "The file must be a YAML mapping with the groups model_parameters, input_parameters, "
     "calibration_parameters and compiler_parameters (see `npuflow build --template`)."),
    ("NPF_BUILD_MISSING_KEYS", "Key {group!r} error: Missing keys: {keys}",
     "Add the missing key(s); `npuflow build --template` shows each one with its allowed values."),
    ("NPF_BUILD_CONFIG_PROBLEMS", "{path} has {count} problems:{problems}",
     "Fix each of them (the code in brackets is the one it has alone, in docs/errors.md); "
     "`npuflow build --template` shows every key with its allowed values."),
    ("NPF_BUILD_UNKNOWN_KEYS", "Key {group!r} error: Wrong keys: {keys}",
     "{suggestion}Allowed keys in {group!r}: {allowed}."),
    ("NPF_BUILD_BAD_ENUM", "{group}.{key}: {value!r} is not one of {allowed}",
     "Use one of the allowed values; separate per-input values with ';'."),
    ("NPF_BUILD_BAD_VALUE", "{group}.{key}: {value!r} is invalid: {reason}",
     "Fix the value; `npuflow build --template` documents every key."),
    ("NPF_BUILD_INPUT_NAME_REQUIRED", "the model has {count} inputs ({inputs}) but input_parameters.input_name is not set",
     "With several inputs, list them in input_name separated by ';': every per-input value follows that order."),
    ("NPF_BUILD_INPUT_NOT_NAMED", "input_parameters.input_name names {named} but the model also takes {missing}",
     "List every model input in input_name, separated by ';', each with its values and a cal_data_dir folder in "
     "the same order; an input the deployment fixes can be a constant instead: model_parameters.freeze_input: "
     "'name=value'."),
    ("NPF_BUILD_COUNT_MISMATCH", "input_parameters.{key} has {got} value(s) but input_name names {expected} input(s) ({inputs})",
     "Give one value per input, in input_name order, separated by ';' (use 'None' for an input without a value)."),
    ("NPF_BUILD_NORM_VALUE_COUNT", "{key} for input {input!r} has {got} number(s); it needs 1 or {channels} (one per channel)",
     "Per-channel numbers are separated by spaces, e.g. '103.94 116.78 123.68'; one number applies to all channels."),
    ("NPF_BUILD_TYPE_PAIR", "input {input!r}: input_type_rt {rt!r} cannot feed input_type_train {train!r}",
     "For input_type_train {train!r} the allowed input_type_rt values are: {allowed}."),
    ("NPF_BUILD_TYPE_CHANNELS", "input {input!r}: input_type_train {train!r} needs {want} channel(s) but shape {shape} in layout {layout} has {got}",
     "Check input_layout_train (it must be the model's own layout) and input_shape; use 'featuremap' for non-image inputs."),
    ("NPF_BUILD_NV12_ODD", "input {input!r}: input_type_rt nv12 needs an even height and width, the input is {height}x{width}",
     "nv12 stores one chroma pair per 2x2 pixels: resize the model input to even sizes or use another input_type_rt."),
    ("NPF_BUILD_OUTPUT_NODE_UNKNOWN", "model_parameters.output_nodes names {name!r}, which is neither a node nor a tensor of the model",
     "Use node or tensor names from the model (`npuflow check` lists the nodes)."),
    ("NPF_BUILD_CALIB_DIR_NOT_FOUND", "calibration folder {path} (input {input!r}) does not exist",
     "Set calibration_parameters.cal_data_dir to a folder of samples; relative paths are resolved from the config file's folder."),
    ("NPF_BUILD_CALIB_EMPTY", "calibration folder {path} (input {input!r}) holds no sample files",
     "Put about 100 samples in it: numpy.save() .npy files or numpy.tofile() raw files, or images with preprocess_on: True."),
    ("NPF_BUILD_CALIB_FILE_SIZE", "calibration file {path} has {size} bytes; input {input!r} of shape {shape} needs {expected}",
     "Save each sample with numpy.tofile() in the train layout and shape: uint8 for images, float32 for featuremaps "
     "(or with numpy.save() as a .npy file)."),
    ("NPF_BUILD_CALIB_NPY", "calibration file {path} holds a {dtype} array of shape {got}; input {input!r} needs shape {shape}",
     "Save each sample with numpy.save() in the train layout and shape (a leading batch dimension of 1 may be left out), "
     "as numbers: uint8 for images, float32 for featuremaps."),
    ("NPF_BUILD_CALIB_IMAGE", "calibration file {path} is not a readable image: {reason}",
     "With preprocess_on: True every file in the folder must be an image Pillow reads (jpg, png, bmp, ...)."),
    ("NPF_BUILD_CALIB_COUNT_MISMATCH", "calibration folders hold different numbers of samples: {counts}",
     "Each input needs the same number of samples; files are paired by sorted name."),
)

# --- performance / profiling ---------------------------------------------------------------
_PERF = _specs(
    ("NPF_PERF_UNSUPPORTED_FILE", "{path} is neither an ONNX model (.onnx) nor a compiled model (.npuf)",
     "Pass the float or quantized .onnx file with --target, or the .npuf file written by `npuflow compile`."),
    ("NPF_PERF_NO_TARGET", "no target given for {path}",
     "Add --target NAME (see `npuflow targets`); only a .npuf file carries its own target."),
    ("NPF_PERF_BAD_THREADS", "--thread-num {value} is outside [1, {high}]",
     "Use 1 thread for latency, more (up to {high}) to measure the peak frame rate."),
    ("NPF_PERF_BAD_FRAMES", "--frame-count {value} must be at least 1",
     "Give the number of frames to run, e.g. --frame-count 200, or a duration with --perf-time MIN."),
)

# --- PyTorch front end / pruning -----------------------------------------------------------
_TORCH = _specs(
    ("NPF_TORCH_CAPTURE_FAILED", "cannot capture {module} as a graph: {reason}",
     "torch.fx traces the forward once with symbolic tensors: move data-dependent Python control "
     "flow (if/for on tensor values) out of forward, or into a submodule that stays a leaf."),
    ("NPF_TORCH_BAD_INPUTS", "bad module or example inputs: {reason}",
     "Pass an nn.Module and example input tensor(s) of the shape the model is deployed with, "
     "e.g. torch.randn(1, 3, 224, 224)."),
    ("NPF_TORCH_EXPORT_FAILED", "torch.onnx.export failed: {reason}",
     "The module must export with torch.onnx.export(..., opset_version=17, dynamo=False); "
     "replace the unsupported operation or export the model to ONNX yourself."),
    ("NPF_TORCH_BAD_CONFIG", "invalid QAT config: {reason}",
     "Fields: weight_bits, activation_bits (2..16), learnable, method ('diffs'|'max'), fold_bn, "
     "per_channel, ema_momentum; the rest comes from the target."),
    ("NPF_TORCH_IMAGE_FORMAT", "image_format {value!r} is not supported",
     "Use image_format=None (text, JSON and .gv only), 'svg' or 'png'."),
    ("NPF_TORCH_BAD_BACKEND_OPTION", "torch.compile backend 'npuflow': option {name!r}: {reason}",
     "Pass options={{'target': 'DPUCZDX8G_ISA1_B4096', 'calib_data': samples}}; accepted: {allowed}."),
    ("NPF_TORCH_DYNAMIC_SHAPES", "the captured graph takes a symbolic size {name} = {value}",
     "Compile with static shapes: torch.compile(model, backend='npuflow', dynamic=False, options=...) "
     "or npuflow.torch.compile(...); each new input shape is then quantized and compiled on its own."),
    ("NPF_TORCH_WEIGHTS_CHANGED", "a parameter or buffer of the compiled graph (graph input {position}) changed "
     "after it was quantized",
     "The npuflow backend freezes the weights when it quantizes, as a deployed model does; call "
     "torch._dynamo.reset() and compile again after training or load_state_dict."),
    ("NPF_QAT_DEPENDENCY_MISSING", "QAT of an ONNX model needs {package}, which is not installed",
     "pip install 'npuflow[torch]' && pip install --no-deps onnx2torch==1.5.15 (--no-deps: its torchvision "
     "requirement is not needed); check, quantize and compile work without them."),
    ("NPF_QAT_UNSUPPORTED_OP", "onnx2torch cannot convert operator(s) {ops} to torch: {nodes}",
     "QAT trains the optimised float graph as a torch module; re-export the model without these operators, "
     "or quantize it with `npuflow quantize` (PTQ, fast_finetune) instead."),
    ("NPF_QAT_BAD_BUDGET", "invalid QAT training budget: {reason}",
     "Give exactly one of --epochs N (passes over the samples) and --minutes M (training wall time), positive."),
    ("NPF_QAT_CHECKPOINT_MISMATCH", "checkpoint {path} is not one of this run: {what}",
     "Resume with the model, target and settings that wrote it, or start afresh: leave out --resume "
     "(load_checkpoint), and give --checkpoint a new path so the old checkpoint is not overwritten."),
    ("NPF_QAT_BAD_METRIC", "the QAT metric callback returned {value}, not a finite number",
     "metric(outputs) must return a float, higher meaning better (outputs: per held-out sample, the list of "
     "the model's outputs); it judges the PTQ start and the trained model."),
    ("NPF_QAT_BAD_DEVICE", "cannot train QAT on device {device!r}: {reason}",
     "Give --device cpu (the default) or a CUDA device this torch build can reach, e.g. cuda or cuda:0 "
     "(torch.cuda.is_available()); several processes (--nproc, torchrun) train on the CPU only."),
    ("NPF_QAT_BAD_OPTION", "invalid QAT option {option}={value!r}: {reason}",
     "feature_weight (--feature-weight): a finite number >= 0 (0: distil the outputs only), for a model with at "
     "least one quantized intermediate tensor; guard_samples (--guard-samples): a positive integer that leaves a "
     "training sample; ema_decay (--ema): a number strictly between 0 and 1 (e.g. 0.98); loss (--loss): auto, kl, "
     "mse or ctc, and ctc only on (N, T, C) outputs (a text recogniser's class rows per step)."),
    ("NPF_QAT_CHECKPOINT_UNREADABLE", "cannot resume from {path}: {reason}",
     "Give the file that --checkpoint (save_checkpoint) wrote; it is replaced whole at each save, so the "
     "last one written is always complete."),
)

# --- channel pruning -----------------------------------------------------------------------
_PRUNE = _specs(
    ("NPF_PRUNE_BAD_SETTING", "invalid pruning setting {name}={value!r}: {reason}",
     "See docs/pruning.md for the accepted values."),
    ("NPF_PRUNE_NO_ANALYSIS", "no sensitivity analysis or search result to prune from",
     "Call ana() (iterative) or search() (one-step) first, or run `npuflow prune ana`."),
    ("NPF_PRUNE_NO_CANDIDATE", "no subnet reached a MAC removal of {ratio} after {tries} tries",
     "Lower the ratio, raise the tolerance, or exclude fewer layers."),
    ("NPF_PRUNE_UNSUPPORTED_MODEL", "torch-pruning cannot follow the channels of {layer}: {reason}",
     "Its outputs reach an op whose channel mapping torch-pruning does not handle (e.g. a conv whose "
     "channels reach an RNN through a transpose); leave that layer unpruned with "
     "IterativePruningRunner(..., excludes=[{layer!r}]) / OneStepPruningRunner(..., excludes=[...])."),
    ("NPF_PRUNE_RATIO_MISSED", "asked to remove {asked} of the MACs, removed {achieved}: channel counts are "
     "multiples of {divisible} and each pruned group's next step back misses the goal: {groups}",
     "The goal is a minimum, met by whole rounded steps. Ask for the ratio removed, or for the one a step "
     "back removes, prune with channel_divisible=1 in the API (finer MAC steps the target may not run "
     "faster), exclude a group (--exclude), or give --target-latency-ms."),
    ("NPF_PRUNE_BAD_SCRIPT", "pruning script {path}: {reason}",
     "The script defines get_model() and get_example_inputs(); eval_fn(model), calib_batches() "
     "and finetune(model) are optional."),
)

# --- scale-out (parallel calibration and sweeps) -------------------------------------------
_SCALEOUT = _specs(
    ("NPF_SCALEOUT_BAD_WORKERS", "{option} {value!r} is not a worker count: {reason}",
     "Give a whole number from 1 (the serial path) to {limit}; on one machine, more workers than CPU cores "
     "only share them."),
    ("NPF_SCALEOUT_RAY_MISSING", "--ray-address {address} needs Ray, which is not installed",
     "pip install 'npuflow[distributed]' (Ray {version}), or use --workers N for a local process pool."),
    ("NPF_SCALEOUT_RAY_CONNECT", "cannot connect to the Ray cluster at {address}: {reason}",
     "Start the cluster first (`ray start --head` on the head node, `ray start --address HEAD:6379` on the "
     "others) and give its address, or 'auto' from a node of the cluster; see docs/scale-out.md."),
    ("NPF_SCALEOUT_WORKER_FAILED", "a {engine} worker failed on task {task}: {reason}",
     "Run again with --workers 1 (the serial path) to see the failure in this process; a worker killed "
     "for memory needs fewer workers or a smaller calibration chunk."),
    ("NPF_SCALEOUT_NOT_PICKLABLE", "{what} cannot be sent to worker processes: {reason}",
     "Pass a module-level function or a picklable object (not a lambda or a closure), or use workers=1."),
    ("NPF_SCALEOUT_NO_PROCESS_GROUP", "distributed QAT needs a torch.distributed process group",
     "Launch with torchrun and call torch.distributed.init_process_group('gloo' or 'nccl') before "
     "npuflow.torch.distributed(qat); see docs/scale-out.md."),
)

# --- accuracy comparison (npuflow compare) ------------------------------------------------
_COMPARE = _specs(
    ("NPF_COMPARE_USAGE", "npuflow compare: {reason}",
     "Compare with the float model: `npuflow compare FLOAT.onnx QUANTIZED.onnx|MODEL.npuf --data DIR`; "
     "compare two dump folders: `npuflow compare --golden DIR --dump DIR [--atol A] [--rtol R]`."),
    ("NPF_COMPARE_NO_COMMON_TENSORS", "no tensor of {quantized} matches a tensor of the float model {float} by name",
     "Compare with the float model the quantized model was made from (quantize writes it as "
     "optimized_float_model.onnx next to quantized_model.onnx): tensors are matched by name."),
    ("NPF_COMPARE_INPUTS_DIFFER", "{quantized} is not a quantized form of the float model {float}: its inputs are "
     "{inputs}, the float model's {float_inputs}",
     "Compare with the float model the quantized model was made from (the source .onnx, or "
     "optimized_float_model.onnx next to quantized_model.onnx), on samples of that model's inputs."),
    ("NPF_COMPARE_DATA_MISMATCH", "compare's --data sample {sample} does not fit the float model {float}: {reason}",
     "--data takes samples of the float model's inputs (their names, dtype and shape; only the dimensions the "
     "model leaves dynamic may vary), read as `npuflow quantize --calib` reads them: give samples preprocessed "
     "as for the model, e.g. those it was quantized on."),
    ("NPF_COMPARE_DATA_SOURCE", "cannot read compare's --data {source}: {reason}",
     "Pass a folder of .npy files (one per sample; one sub-folder per input for several inputs), a folder of "
     ".npz files (one per sample, every input by name), one .npy/.npz of stacked samples, or a dataset.txt "
     "listing .npy files."),
    ("NPF_COMPARE_DUMP_MISSING", "dump folder {path}: {reason}",
     "Write dump folders with `npuflow run MODEL.npuf --input NAME=FILE.npy --dump DIR` (or "
     "Session.run(..., dump_dir=DIR)): index.json maps tensor names to the .npy files beside it."),
    ("NPF_COMPARE_SATURATED", "{count} quantize step(s) clip over {limit} of the values these {samples} sample(s) "
     "bring them, and over {error} of their magnitude (clip error |x - clip(x)| / |x|); worst: {nodes}",
     "The samples go past the range quantize calibrated for these tensors, so their values are clipped to the end "
     "codes there and accuracy drops where quantize's own similarity (measured on the calibration samples) did "
     "not show it: calibrate on samples that cover the data you deploy on (their extremes included), or widen "
     "these ranges (calibration method 'minmax' or a larger percentile in the quantize config; on a power-of-two "
     "target a position one step coarser).  compare.json's 'saturation' lists every step."),
    ("NPF_COMPARE_DUMP_CORRUPT", "{path} cannot be read as a dump file: {reason}",
     "Write the dump again; index.json must be a JSON object of tensor name -> file name, each file a numpy.save array."),
)

# --- model tools (npuflow modify / pack / graph) -------------------------------------------
_TOOLS = _specs(
    ("NPF_MODIFY_NOT_REMOVABLE", "{path}: node {name!r} cannot be removed: {reason}",
     "{did_you_mean}Removable now: {removable}. Only input-side quantize, cast, transpose, reshape and "
     "preprocessing nodes (fed by a model input alone) and output-side dequantize, transpose and reshape "
     "nodes (writing a model output alone) can go; remove them outside in, one after the other."),
    ("NPF_PACK_TARGET_MISMATCH", "{path} is compiled for {target} (fingerprint {fingerprint}), {first} for "
     "{first_target} (fingerprint {first_fingerprint})",
     "A packed file serves one accelerator: compile every model for the same target before packing."),
    ("NPF_PACK_DUPLICATE_NAME", "two models to pack are named {name!r} ({paths})",
     "Models are named by their file names (without .npuf): rename one of the files."),
    ("NPF_PACK_MODEL_REQUIRED", "{path} packs {count} models; name the one to use",
     "Pass model=NAME (Session, CompiledModel.load) or --model NAME (run, info --op, graph); packed models: {names}."),
    ("NPF_PACK_UNKNOWN_MODEL", "{path} has no model named {name!r}",
     "{did_you_mean}Models in the file: {names}."),
    ("NPF_GRAPH_USAGE", "cannot draw {path}: {reason}",
     "npuflow graph MODEL.npuf -o x.svg|x.png|x.pdf|x.gv [--program K]: pictures are drawn by Graphviz's dot, "
     ".gv/.dot is the Graphviz source; K counts the compiled shape sets from 1 (npuflow info lists them)."),
)

# --- compiler plugins (npuflow.plugins) ---------------------------------------------------
_PLUGIN = _specs(
    ("NPF_PLUGIN_UNKNOWN", "no compiler plugin called {plugin!r} (available: {available})",
     "Register it with npuflow.plugins.register_plugin(MyPlugin) before compiling, or install the package "
     "that provides it (entry point group 'npuflow.plugins'); docs/plugins.md."),
    ("NPF_PLUGIN_BAD", "compiler plugin {plugin} cannot be registered: {reason}",
     "Subclass npuflow.plugins.Plugin, set name = 'lower_case_name', implement claims() and runner()."),
    ("NPF_PLUGIN_FAILED", "compiler plugin {plugin!r} failed in {step}: {reason}",
     "The error is in the plugin's own code ({step}); fix or update the plugin, or compile without it."),
    ("NPF_RUNTIME_PLUGIN_MISSING", "the model runs subgraph {subgraph} on compiler plugin {plugin!r}, which this "
     "process does not have",
     "Install or register the plugin (npuflow.plugins.register_plugin) before opening the Session; a .npuf "
     "names its plugins but never carries their code."),
)

CATALOG: dict[str, ErrorSpec] = {
    **_GENERIC, **_MODEL, **_TARGET, **_CHECK, **_QUANT, **_COMPILE, **_RUNTIME, **_BUILD,
    **_PERF, **_TORCH, **_PRUNE, **_SCALEOUT, **_COMPARE, **_TOOLS, **_PLUGIN,
}


class NpuflowError(Exception):
    """The one exception type for user-facing failures.

    ``NpuflowError("NPF_MODEL_NOT_FOUND", path="m.onnx")`` formats the catalog's message and
    hint with the keyword arguments; a missing keyword is a programming error and fails loudly.
    """

    def __init__(self, code: str, **fields: object) -> None:
        if code not in CATALOG:
            raise KeyError(f"error code {code} is not in the catalog")
        spec = CATALOG[code]
        self.code = code
        self.fields = fields
        self.message = spec.message.format(**fields)
        self.hint = spec.hint.format(**fields)
        # the hint is in the exception's text: an uncaught error's traceback, print(exc) and
        # wrappers that show str(exc) (Dynamo's BackendCompilerFailed) printed the message alone
        super().__init__(f"[{code}] {self.message}\n  hint: {self.hint}")

    def render(self) -> str:
        """The two lines the CLI prints."""
        return f"ERROR [{self.code}] {self.message}\n  hint: {self.hint}"

    def __reduce__(self) -> tuple:
        """Pickle as code and fields: the default (the exception's args, here the formatted
        message) would call ``__init__`` with the message as the code, so an error raised in a
        worker process, or a result carrying one, could not be sent back or loaded again."""
        return (_rebuild, (self.code, self.fields))


def _rebuild(code: str, fields: dict[str, object]) -> NpuflowError:
    return NpuflowError(code, **fields)


def error_text(exc: BaseException) -> str:
    """An exception quoted inside another message or a log line: a coded error's
    ``[CODE] message`` without its hint (the quoting message gives its own advice, and the
    hint's line would break it in two), any other exception's ``str``."""
    return f"[{exc.code}] {exc.message}" if isinstance(exc, NpuflowError) else str(exc)


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice nearest ``word`` (difflib's ratio, case ignored), or None when none is close."""
    options = {c.lower(): c for c in choices}
    near = difflib.get_close_matches(word.lower(), list(options), n=1, cutoff=cutoff)
    return options[near[0]] if near else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"Did you mean 'X'? "`` for the nearest choice, or ``""``: the start of a hint (the one
    suggestion rule of targets, config keys and names)."""
    near = closest(word, choices)
    return f"Did you mean {near!r}? " if near is not None else ""


def catalog_markdown() -> str:
    """``docs/errors.md``: one row per code, generated so the docs cannot drift."""
    lines = [
        "# Error codes",
        "",
        "Generated from `npuflow/errors.py` by `python -m npuflow.errors > docs/errors.md`; do not edit.",
        "Every code is printed as `ERROR [CODE] message` followed by a hint, and the command exits non-zero.",
        "In Python, `str(exc)` of an `npuflow.NpuflowError` is `[CODE] message` with `  hint: ...` on the next line;",
        "`exc.code`, `exc.message` and `exc.hint` hold the parts.",
        "",
        "| code | message | hint |",
        "| --- | --- | --- |",
    ]
    for spec in sorted(CATALOG.values(), key=lambda s: s.code):
        lines.append(f"| `{spec.code}` | {_md(spec.message)} | {_md(spec.hint)} |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


if __name__ == "__main__":
    import sys

    sys.stdout.write(catalog_markdown())
