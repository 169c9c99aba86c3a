"""``npuflow qat MODEL.onnx -t TARGET --data DIR (--epochs N | --minutes M) -o OUT``: label-free QAT.

A thin wrapper over :func:`npuflow.torch.onnx_qat.qat_onnx`: PTQ start (AdaRound unless ``-c``
says otherwise), conversion to torch, distillation from the FP32 model on the unlabelled samples
in ``DIR``, export.  The progress bar shows the running distillation loss and the current output
cosine to FP32; the summary gives, for the PTQ start and the trained model exported and run in
ONNX Runtime on held-out samples, the measure that decides (argmax agreement with FP32 for class
or probability outputs, else output cosine) and the output cosine, and which one was kept.
``OUT`` receives ``quantized_model.onnx`` (give it to ``npuflow compile``),
``ptq_model.onnx`` and ``qat_report.json``.  torch and onnx2torch are optional dependencies
(``pip install 'npuflow[torch]'``): without them the command is ``NPF_QAT_DEPENDENCY_MISSING``.

``--device cuda`` trains the student on a GPU (one process; docs/qat.md "QAT on a GPU").
``--nproc N`` trains data-parallel in N local processes; launched by ``torchrun`` the command
runs on every rank and rank 0 alone prints and writes (docs/scale-out.md).  ``--checkpoint``
writes a resumable checkpoint as training goes, ``--resume`` continues from one.  ``--ema D``
also keeps an exponential moving average of the weights (decay D); the summary then gives its
measure too, and which of the start, the final weights and the average was kept.  ``--loss ctc``
trains a text recogniser on the lines FP32 reads (CTC on its greedy decodes) beside the per-step KL.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import NpuflowError
from .app import app, console, err_console, examples, input_shape_option, input_shapes_arg, output_option, target_option
from .progress import StageProgress


@app.command("qat", epilog=examples(
    "npuflow qat efficientnet_lite0.onnx -t DPUCZDX8G_ISA1_B4096 --data crops/ --minutes 10 -o qat_out",
    "npuflow qat ocr_rec.onnx -t DPUCZDX8G_ISA1_B4096 --data lines/ --epochs 3 -c ptq.yaml -o qat_out",
    "npuflow qat ocr_rec.onnx -t DPUCZDX8G_ISA1_B4096 --data lines/ --epochs 3 --nproc 4 --checkpoint qat.ckpt "
    "-o qat_out",
    "npuflow qat ocr_rec.onnx -t DPUCZDX8G_ISA1_B4096 --data lines/ --epochs 3 --resume qat.ckpt "
    "--checkpoint qat.ckpt -o qat_out",
))
def qat_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="Float ONNX model."),
    target: str = target_option(),
    data: Path = typer.Option(..., "--data", metavar="DIR", help="Unlabelled samples: folder of .npy or raw "
                              "numpy.tofile files (as quantize --calib); they calibrate the PTQ start and train."),
    output: Path = output_option(..., "DIR", "Output folder for quantized_model.onnx, ptq_model.onnx and "
                                 "qat_report.json."),
    epochs: Optional[float] = typer.Option(None, "--epochs", metavar="N", help="Train N passes over the samples."),
    minutes: Optional[float] = typer.Option(None, "--minutes", metavar="M", help="Train for M minutes of wall time."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE", help="Quantization config of the "
                                          "PTQ start (JSON or YAML; default: AdaRound fast finetune)."),
    input_shape: Optional[List[str]] = input_shape_option("Freeze an input's shape"),
    batch: int = typer.Option(8, "--batch", metavar="N", min=1, help="Samples per training step."),
    lr: float = typer.Option(0.05, "--lr", metavar="LR", help="Learning rate of each layer's weights in units of "
                             "its weight quantization step (Adam, cosine decay)."),
    quantizer_lr: float = typer.Option(1e-2, "--quantizer-lr", metavar="LR",
                                       help="Learning rate of the log2 thresholds / step sizes."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Light augmentation (gain, offset, noise, "
                                 "small shifts) of the training samples."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the sample order and augmentation."),
    nproc: int = typer.Option(1, "--nproc", metavar="N", help="Train data-parallel in N local processes (torch DDP, "
                              "gloo), each on its share of every --batch; under torchrun leave it at 1."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", metavar="FILE", help="Write a resumable "
                                              "checkpoint here every --checkpoint-every steps and at the end."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", metavar="N", min=1,
                                                   help="Steps between checkpoints (default: one epoch)."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="FILE", help="Continue the training a "
                                          "--checkpoint file holds (same model, target, data and batch)."),
    device: str = typer.Option("cpu", "--device", metavar="DEV", help="Where the student trains: cpu, or a GPU "
                               "torch can reach (cuda, cuda:0); the FP32 teacher and the export stay on the CPU."),
    feature_weight: float = typer.Option(0.0, "--feature-weight", metavar="W", help="Also distil a few "
                                         "intermediate tensors of the FP32 model, with weight W beside the output "
                                         "loss (0: outputs only)."),
    guard_samples: Optional[int] = typer.Option(None, "--guard-samples", metavar="N", help="Hold the last N "
                                                "samples out of training to judge start vs trained (default: a "
                                                "fifth, at most 64); a trained model must lead by more than "
                                                "one held-out row."),
    loss: str = typer.Option("auto", "--loss", metavar="KIND", help="Distillation loss: auto (KL on class or "
                             "probability rows, else normalised squared error), kl, mse, or ctc (text recognisers' "
                             "(N, T, C) outputs: CTC on FP32's greedy decodes plus the per-step KL)."),
    ema: Optional[float] = typer.Option(None, "--ema", metavar="DECAY", help="Also keep a moving average of the "
                                        "weights with this decay (0 < DECAY < 1, e.g. 0.98 for ~200 steps); the "
                                        "guard judges it beside the final weights and the start."),
) -> None:
    """Quantization-aware training of an ONNX model on unlabelled data, by distillation from FP32."""
    if (epochs is None) == (minutes is None):
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason="give exactly one of --epochs and --minutes")
    qat_onnx = _qat_entry()
    # under torchrun every rank runs this command; only rank 0 shows a bar (the others pass None)
    bar = StageProgress("qat", console, err_console) if os.environ.get("RANK", "0") == "0" else nullcontext()
    with bar as progress:
        result = qat_onnx(str(model), target, str(data), epochs=epochs, minutes=minutes,
                          ptq_config=str(config) if config else None, input_shapes=input_shapes_arg(input_shape),
                          batch=batch, lr=lr, quantizer_lr=quantizer_lr, augment=augment, seed=seed,
                          progress=progress, nproc=nproc, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                          resume=resume, device=device, feature_weight=feature_weight,
                          guard_samples=guard_samples, ema_decay=ema, loss=loss)
    if result is None:  # a rank other than 0 of a torchrun launch: rank 0 reports and writes
        return
    if result.report["resumed_at_step"] is not None:
        console.print(f"resumed from {resume} at step {result.report['resumed_at_step']}")
    console.print(f"{result.measure} to FP32 on {result.report['eval_samples']} samples (the exported model in "
                  f"ONNX Runtime): PTQ start {result.start_score:.6f}, after {result.steps} steps ({result.epochs:.2f} "
                  f"epochs, {result.seconds:.0f} s) {result.trained_score:.6f} (output cosine {result.start_cosine:.6f} "
                  f"-> {result.trained_cosine:.6f})"
                  + (f", weight EMA {result.ema_score:.6f} (output cosine {result.ema_cosine:.6f})"
                     if result.ema_score is not None else "") + f"; kept the {result.kept}")
    for key, path in result.save(output).items():
        console.print(f"wrote {key}: {path}")


def _qat_entry():
    """``qat_onnx``, or the coded error naming the optional dependency that is missing."""
    from ..build.pipeline import onnx_qat_module

    return onnx_qat_module().qat_onnx
