"""The commented config template printed by ``npuflow build --template``.

It is a complete, valid config (a test parses and validates it), so users can start from it
and change only what differs; the comments give the allowed values of every key.
"""

from __future__ import annotations

TEMPLATE = """\
# npuflow build config (the groups and keys of hb_mapper makertbin).
# Per-input values are separated by ';' in input_name order; per-channel numbers by spaces.
# Relative paths are resolved from this file's folder.

model_parameters:
  # the float ONNX model to convert
  onnx_model: 'model.onnx'
  # target name, fingerprint or arch.json (`npuflow targets` lists them)
  march: 'DPUCZDX8G_ISA1_B4096'
  # prefix of every output file: {prefix}_original_float_model.onnx, {prefix}.npuf, ...
  output_model_file_prefix: 'mobilenetv1'
  # output folder, created if missing
  working_dir: './model_output'
  # hb_mapper's per-layer dump: recorded only (every .npuf dumps its layers: npuflow run --dump)
  layer_out_dump: False
  # npuflow_build.log detail: debug, info or warn
  log_level: 'info'
  # optional: names of the nodes whose outputs become the model's only outputs ('a; b')
  # output_nodes: 'prob'
  # optional: inputs fixed for this deployment, turned into constants ('name=value; ...'): an
  # If/Loop the model branches on them with is inlined (silero-vad: 'sr=16000')
  # freeze_input: 'sr=16000'

input_parameters:
  # input node name(s); needed only when the model has several inputs
  input_name: 'data'
  # what the float model was trained on: rgb, bgr, yuv444, gray, featuremap
  input_type_train: 'bgr'
  # the float model's own layout: NCHW or NHWC
  input_layout_train: 'NCHW'
  # what the device feeds at run time: nv12, yuv444, rgb, bgr, gray, featuremap
  #   train yuv444 <- nv12, yuv444;  rgb/bgr <- nv12, yuv444, rgb, bgr;
  #   gray <- gray;  featuremap <- featuremap
  input_type_rt: 'nv12'
  # run-time layout: NCHW or NHWC (ignored for nv12)
  input_layout_rt: 'NHWC'
  # nv12/yuv444 value range: regular (0-255) or bt601_video (16-235)
  input_space_and_range: 'regular'
  # input shape(s), dimensions joined by 'x'; read from the model when omitted
  input_shape: '1x3x224x224'
  # hb_mapper's batch of the compiled model: only 1 (npuflow compiles the batch of input_shape)
  input_batch: 1
  # preprocessing built into the model: data_mean_and_scale ((x - mean) * scale),
  # data_mean, data_scale, no_preprocess
  norm_type: 'data_mean_and_scale'
  # one number, or one per channel separated by spaces; 'None' for an input without one
  mean_value: '103.94 116.78 123.68'
  scale_value: '0.017'

calibration_parameters:
  # folder(s) of about 100 samples: numpy.tofile() raw files in the train type, layout and
  # shape (uint8 images, float32 featuremaps) or, with preprocess_on, images
  cal_data_dir: './calibration_data'
  # optional: folder(s) of evaluation samples in the same format, never calibrated on: the accuracy
  # check judges them (its warnings then speak for unseen inputs; the report gives both figures)
  # eval_data_dir: './eval_data'
  # True: the folder holds images; they are resized to the input size
  preprocess_on: False
  # optional: the dtype of the raw files, float32 or uint8 (unset: told by each file's size)
  # cal_data_type: 'float32'
  # hb_mapper's default (automatic search), kl, max, or the quantizer's own methods:
  # auto (= default), minmax, percentile (uses max_percentile), entropy (= kl), mse
  calibration_type: 'default'
  # clipping percentile of 'max' and 'percentile' (0.0-1.0)
  max_percentile: 1.0
  # per-channel feature-map ranges (accepted for hb_mapper configs; npuflow activations are per tensor)
  per_channel: False
  # optional: nodes kept in float on the CPU, separated by ';' (run_on_npu/run_on_bpu is
  # accepted too; npuflow already puts every node the target supports on the NPU)
  # run_on_cpu: 'Conv_0'
  # run_on_npu: 'Softmax_0'
  # optional: QAT after PTQ, by distillation from the float model on the calibration samples
  # (needs npuflow[torch]; docs/qat.md): passes over them, or minutes of training (one of the two)
  # qat_epochs: 3
  # qat_minutes: 10
  # local processes that QAT trains in, data parallel (torch DDP; docs/scale-out.md)
  # qat_nproc: 2
  # or the torch device the student trains on (the float teacher stays on the CPU)
  # qat_device: cuda
  # a moving average of the weights (decay 0 < d < 1), judged beside the final ones (docs/qat.md)
  # qat_ema: 0.98
  # the distillation loss: ctc for a text recogniser's (N, T, C) rows (CTC on the float model's lines)
  # qat_loss: ctc
  # optional: an accuracy target, the lowest output cosine on the calibration samples: the cheapest
  # steps (percentile search, equalisation, AdaRound, block reconstruction) run until it holds,
  # every layer on the accelerator (docs/quantization.md); beside it, time_budget (seconds after
  # which no step starts, e.g. 600) and allow_cpu_fallback (True: then the fewest layers move to
  # float on the CPU)
  # min_similarity: 0.99

compiler_parameters:
  # hb_mapper's compiler settings: recorded in the .npuf, npuflow compiles one program
  # (a value other than these defaults is a warning)
  # latency or bandwidth
  compile_mode: 'latency'
  # keep debug information in the compiled model
  debug: False
  # accelerator cores used for one inference
  core_num: 1
  # O0 (fastest compile) ... O3 (fastest model; use it for deployment)
  optimize_level: 'O3'

# optional (hb_mapper's custom_op group): Python files, ';'-separated, that register the model's
# custom operators (npuflow.register_op / register_op_library, docs/custom-ops.md); they run
# before the model loads
# custom_op:
#   custom_op_method: register
#   op_register_files: 'my_ops.py'
#   custom_op_dir: './custom_op'

# optional: a full npuflow quantizer config, merged over what calibration_parameters set
# (docs/quantization.md); the build fails (NPF_QUANT_LOW_SIMILARITY) when the quantized model's
# output cosine similarity on the calibration samples is below min_output_cosine (default 0.95)
# npuflow:
#   activation: {method: percentile}
#   min_output_cosine: 0.9
"""
