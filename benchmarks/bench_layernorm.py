"""LayerNorm-heavy blocks (ConvNeXt, EdgeNeXt, EfficientFormer styles) on B4096, bernoulli2 and cpu-int8.

Each net is built here with torch (random weights, BatchNorm statistics perturbed
``torch==2.13.0``, no
torchvision) in four LayerNorm forms: ``cf`` ConvNeXt's channels-first LayerNorm written out (mean over C,
subtract, square, mean, + eps, sqrt, divide, scale, shift), ``nhwc`` ``nn.LayerNorm`` on the permuted map,
``func`` ``F.layer_norm`` there, ``gn`` ``GroupNorm(1, C)``
exported by TorchScript at opset 14 (which writes
``nn.LayerNorm`` out too) or 17, or by the dynamo exporter (opset 18).  EfficientFormer (Meta4D pooling block,
Meta3D attention blocks on tokens) uses ``nn.LayerNorm``.  For each model and target: quantize on 16 smooth
random 3x32x32 inputs, compile, and report the compiled subgraphs (accelerator ones), the Session's ONNX
Runtime calls per frame (its steps after ``runtime/joined.py``), the time per frame of ``Session`` (1 thread)
against ONNX Runtime on the plain QDQ export (``to_plain_qdq``, 1 thread) and FP32, interleaved round by
round, and the cosine of the Session's output against FP32 on 16 held-out inputs.

    python benchmarks/bench_layernorm.py --out /tmp/ln.jsonl [--models convnext_cf_o14,...] [--targets D,B,C]

Appends one JSON line per model x target to ``--out`` and prints it (results: ``results/layernorm_s32.md``).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

import npuflow
from npuflow.quant.export import to_plain_qdq

class LNcf(nn.Module):  # channels-first written out (ConvNeXt / EdgeNeXt)
    def __init__(s, c, eps=1e-6):
        super().__init__()
        s.w = nn.Parameter(1 + 0.1 * torch.randn(c))
        s.b = nn.Parameter(0.1 * torch.randn(c))
        s.eps = eps
    def forward(s, x):
        u = x.mean(1, keepdim=True)
        v = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(v + s.eps)
        return s.w[:, None, None] * x + s.b[:, None, None]

class LNnhwc(nn.Module):  # nn.LayerNorm on permuted NHWC
    def __init__(s, c, func=False):
        super().__init__()
        s.ln = nn.LayerNorm(c, eps=1e-6)
        s.func = func
        with torch.no_grad():
            s.ln.weight.add_(0.1 * torch.randn(c))
            s.ln.bias.add_(0.1 * torch.randn(c))
    def forward(s, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, s.ln.normalized_shape, s.ln.weight, s.ln.bias, 1e-6) if s.func else s.ln(x)
        return x.permute(0, 3, 1, 2)

class GN1(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.gn = nn.GroupNorm(1, c, eps=1e-6)
        with torch.no_grad():
            s.gn.weight.add_(0.1 * torch.randn(c))
            s.gn.bias.add_(0.1 * torch.randn(c))
    def forward(s, x): return s.gn(x)

def make_norm(kind, c):
    return {"cf": lambda: LNcf(c), "nhwc": lambda: LNnhwc(c), "func": lambda: LNnhwc(c, True), "gn": lambda: GN1(c)}[kind]()

class ConvNeXtBlock(nn.Module):
    def __init__(s, c, kind):
        super().__init__()
        s.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        s.norm = make_norm(kind, c)
        s.pw1 = nn.Conv2d(c, 4 * c, 1)
        s.pw2 = nn.Conv2d(4 * c, c, 1)
        s.g = nn.Parameter(0.5 * torch.ones(c, 1, 1))
    def forward(s, x):
        return x + s.g * s.pw2(F.gelu(s.pw1(s.norm(s.dw(x)))))

class ConvNeXt(nn.Module):  # stem conv4 + LN, blocks, downsample LN + conv2 s2
    def __init__(s, kind, c=(24, 48), n=10):
        super().__init__()
        s.stem = nn.Sequential(nn.Conv2d(3, c[0], 4, 4), make_norm(kind, c[0]))
        s.s1 = nn.Sequential(ConvNeXtBlock(c[0], kind), ConvNeXtBlock(c[0], kind))
        s.down = nn.Sequential(make_norm(kind, c[0]), nn.Conv2d(c[0], c[1], 2, 2))
        s.s2 = nn.Sequential(ConvNeXtBlock(c[1], kind), ConvNeXtBlock(c[1], kind))
        s.head = nn.Linear(c[1], n)
        s.hn = nn.LayerNorm(c[1])
    def forward(s, x):
        x = s.s2(s.down(s.s1(s.stem(x))))
        return s.head(s.hn(x.mean((2, 3))))

class EdgeNeXtEnc(nn.Module):  # dw -> permute -> LN(NHWC) -> Linear -> GELU -> Linear -> gamma -> permute
    def __init__(s, c, k, kind):
        super().__init__()
        s.dw = nn.Conv2d(c, c, k, padding=k // 2, groups=c)
        s.kind = kind
        s.norm = nn.LayerNorm(c, eps=1e-6) if kind in ("nhwc", "func") else make_norm(kind, c)
        s.l1 = nn.Linear(c, 4 * c)
        s.l2 = nn.Linear(4 * c, c)
        s.g = nn.Parameter(0.5 * torch.ones(c))
    def forward(s, x):
        y = s.dw(x)
        if s.kind in ("nhwc", "func"):
            y = y.permute(0, 2, 3, 1)
            y = s.norm(y)
        else:
            y = s.norm(y).permute(0, 2, 3, 1)
        y = s.g * s.l2(F.gelu(s.l1(y)))
        return x + y.permute(0, 3, 1, 2)

class EdgeNeXt(nn.Module):
    def __init__(s, kind, c=(24, 48), n=10):
        super().__init__()
        s.stem = nn.Sequential(nn.Conv2d(3, c[0], 4, 4), make_norm(kind, c[0]))
        s.s1 = nn.Sequential(EdgeNeXtEnc(c[0], 7, kind), EdgeNeXtEnc(c[0], 7, kind))
        s.down = nn.Sequential(make_norm(kind, c[0]), nn.Conv2d(c[0], c[1], 2, 2))
        s.s2 = nn.Sequential(EdgeNeXtEnc(c[1], 5, kind), EdgeNeXtEnc(c[1], 5, kind))
        s.head = nn.Linear(c[1], n)
        s.hn = nn.LayerNorm(c[1])
    def forward(s, x):
        x = s.s2(s.down(s.s1(s.stem(x))))
        return s.head(s.hn(x.mean((2, 3))))

class Meta3D(nn.Module):  # EfficientFormer: tokens, LN, MHSA, LN, MLP
    def __init__(s, c, heads=2):
        super().__init__()
        s.n1 = nn.LayerNorm(c)
        s.qkv = nn.Linear(c, 3 * c)
        s.proj = nn.Linear(c, c)
        s.n2 = nn.LayerNorm(c)
        s.f1 = nn.Linear(c, 2 * c)
        s.f2 = nn.Linear(2 * c, c)
        s.h = heads
    def forward(s, x):
        B, N, C = x.shape
        q, k, v = s.qkv(s.n1(x)).reshape(B, N, 3, s.h, C // s.h).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * (C // s.h) ** -0.5
        x = x + s.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))
        return x + s.f2(F.gelu(s.f1(s.n2(x))))

class EfficientFormer(nn.Module):
    def __init__(s, kind, c=(24, 48), n=10):
        super().__init__()
        s.stem = nn.Sequential(nn.Conv2d(3, c[0], 3, 2, 1), nn.BatchNorm2d(c[0]), nn.ReLU(), nn.Conv2d(c[0], c[0], 3, 2, 1), nn.BatchNorm2d(c[0]), nn.ReLU())
        s.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        s.m4 = nn.Sequential(nn.Conv2d(c[0], 4 * c[0], 1), nn.BatchNorm2d(4 * c[0]), nn.GELU(), nn.Conv2d(4 * c[0], c[0], 1), nn.BatchNorm2d(c[0]))
        s.down = nn.Sequential(nn.Conv2d(c[0], c[1], 3, 2, 1), nn.BatchNorm2d(c[1]))
        s.m3 = nn.Sequential(Meta3D(c[1]), Meta3D(c[1]))
        s.nf = nn.LayerNorm(c[1])
        s.head = nn.Linear(c[1], n)
        s.kind = kind
    def forward(s, x):
        x = s.stem(x)
        x = x + (s.pool(x) - x)
        x = x + s.m4(x)
        x = s.down(x)
        x = x.flatten(2).transpose(1, 2)
        x = s.m3(x)
        return s.head(s.nf(x).mean(1))

def build(arch, kind, seed=0):
    """Net ``arch`` with LayerNorm form ``kind``, random weights (BatchNorm statistics perturbed)."""
    torch.manual_seed(seed)
    m = {"convnext": ConvNeXt, "edgenext": EdgeNeXt, "effformer": EfficientFormer}[arch](kind).eval()
    # perturb BN stats so they are not identity
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m

def export(m, path, opset=17, dynamo=False, size=32):
    """TorchScript at ``opset``, or the dynamo exporter (opset 18)."""
    x = torch.randn(1, 3, size, size)
    if dynamo:
        torch.onnx.export(m, (x,), path, dynamo=True, opset_version=18, input_names=["x"], output_names=["y"])
    else:
        torch.onnx.export(m, (x,), path, dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"])


TG = {"D": "DPUCZDX8G_ISA1_B4096", "B": "bernoulli2", "C": "cpu-int8"}

def sess(m):
    """ONNX Runtime on one thread (a model or a path)."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m), o, providers=["CPUExecutionProvider"])

def tmed(fn, n):
    """Median seconds of ``n`` calls of ``fn``."""
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)

def one(path, tk, rounds=5, runs=10, timing=True):
    """One row (module docstring) for the model at ``path`` on target key ``tk``."""
    rng = np.random.default_rng(0)
    img = lambda: {"x": np.kron(rng.standard_normal((1, 3, 8, 8)), np.ones((1, 1, 4, 4))).astype(np.float32)
                   + 0.2 * rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    calib = [img() for _ in range(16)]
    held = [img() for _ in range(16)]
    q = npuflow.quantize(path, calib, target=TG[tk])
    c = npuflow.compile(q.model, TG[tk])
    d = tempfile.mkdtemp()
    p = Path(d) / "m.npuf"
    c.save(p)
    s = npuflow.Session(p, threads=1)
    steps = len(s._live()[0].steps)
    fp = sess(path)
    cos = []
    for h in held:
        a = fp.run(None, h)[0].ravel().astype(np.float64)
        b = s.run(h)["y"].ravel().astype(np.float64)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    r = {"model": Path(path).stem, "t": tk, "sub": len(c.subgraphs), "acc": sum(x.on_accelerator for x in c.subgraphs),
         "steps": steps, "cos_min": min(cos), "cos_mean": statistics.mean(cos)}
    if timing:
        plain = sess(to_plain_qdq(q.model))
        x = held[0]
        fs = {"npuf": lambda: s.run(x), "plain": lambda: plain.run(None, x), "fp32": lambda: fp.run(None, x)}
        for f in fs.values():  # warm-up
            f()
            f()
        tt = {k: [] for k in fs}
        for rr in range(rounds):
            for k, f in (list(fs.items()) if rr % 2 == 0 else list(fs.items())[::-1]):
                tt[k].append(tmed(f, runs))
        med = {k: statistics.median(v) * 1e3 for k, v in tt.items()}
        r.update(ms=med, ratio_plain=med["plain"] / med["npuf"])
    s.close()
    return r


#: model name -> (architecture, LayerNorm form, export: opset or "dyn")
MODELS = {f"{a}_{k}_o14": (a, k, 14) for a in ("convnext", "edgenext") for k in ("cf", "nhwc", "func", "gn")}
MODELS.update({"convnext_cf_o17": ("convnext", "cf", 17), "convnext_nhwc_o17": ("convnext", "nhwc", 17),
               "edgenext_nhwc_o17": ("edgenext", "nhwc", 17), "convnext_gn_dyn": ("convnext", "gn", "dyn"),
               "edgenext_cf_dyn": ("edgenext", "cf", "dyn"), "effformer_o14": ("effformer", "x", 14),
               "effformer_o17": ("effformer", "x", 17), "effformer_dyn": ("effformer", "x", "dyn")})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default="D,B,C")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    with open(args.out, "a") as fh:
        for name in args.models.split(","):
            arch, kind, opset = MODELS[name]
            path = str(folder / f"{name}.onnx")
            export(build(arch, kind), path, 17 if opset == "dyn" else opset, dynamo=opset == "dyn")
            for tk in args.targets.split(","):
                r = {**one(path, tk), "load": os.getloadavg()[0]}
                print(json.dumps(r), flush=True)
                fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
