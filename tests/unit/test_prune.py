"""Channel pruning: coupled channels go together, models stay runnable, goals are met."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn

from npuflow.errors import NpuflowError
from npuflow.prune import IterativePruningRunner, OneStepPruningRunner, get_pruning_runner, kept_channels
from npuflow.prune.groups import apply_masks, channel_rankings, removed_channels, slim


class ResCatNet(nn.Module):
    """Residual add, concat, depthwise conv and BN: the couplings that break naive pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Conv2d(32, 48, 1)
        self.c = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        s = self.stem(x)
        y = self.a(s) + s  # residual: stem and a share channels
        y = self.dw(y)
        z = torch.cat([self.b(y), self.c(y)], dim=1)
        return self.head(z.mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return ResCatNet().eval()


X = torch.randn(2, 3, 16, 16)


def test_kept_channels_rounds_up_to_engine_parallelism():
    assert kept_channels(64, 0.5, 1) == 32
    assert kept_channels(64, 0.4, 16) == 48  # 38.4 -> 39 -> 48
    assert kept_channels(20, 0.9, 16) == 16
    assert kept_channels(48, 0.0, 16) == 48


def test_coupled_groups_are_pruned_together_and_model_runs(net):
    rankings = channel_rankings(net, X)
    names = set(rankings)
    # the residual couples stem.0 and a.0 (and the depthwise conv follows them): one group
    assert "head" not in names  # the classifier's outputs are the model's outputs
    residual = [n for n, (g, _) in rankings.items() if "stem.0" in g.members and "a.0" in g.members]
    assert residual, rankings
    spec = {n: g.channels // 2 for n, (g, _) in rankings.items()}
    small = slim(net, X, removed_channels(rankings, spec))
    out = small(X)
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    assert small.stem[0].out_channels == small.a[0].out_channels == small.dw[0].in_channels
    buf = io.BytesIO()
    torch.onnx.export(small, (X,), buf, opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))


def test_sparse_masks_survive_training_and_slim_matches(net):
    rankings = channel_rankings(net, X)
    removed = removed_channels(rankings, {n: g.channels // 2 for n, (g, _) in rankings.items()})
    sparse = ResCatNet()
    sparse.load_state_dict(net.state_dict())
    apply_masks(sparse, X, removed)
    opt = torch.optim.SGD(sparse.parameters(), lr=0.1)
    sparse.train()
    loss = sparse(X).pow(2).sum()
    loss.backward()
    opt.step()
    sparse.eval()
    sparse(X)  # the pre-hook re-applies the mask
    name = next(iter(removed))
    w = dict(sparse.named_modules())[name].weight
    assert float(w.detach()[removed[name]].abs().sum()) == 0.0
    dense = slim(sparse, X, removed)
    assert torch.allclose(dense(X), sparse(X), atol=1e-5)


def test_iterative_rounds_meet_goals_relative_to_original(net, tmp_path):
    runner = IterativePruningRunner(net, X, workdir=tmp_path)
    runner.ana(ratios=(0.2, 0.4, 0.6, 0.8))
    base = runner.baseline_cost["macs"]
    first = runner.prune(removal_ratio=0.3)
    assert 1 - runner.rounds[-1].after["macs"] / base >= 0.3
    second = runner.prune(removal_ratio=0.5, model=first)
    assert 1 - runner.rounds[-1].after["macs"] / base >= 0.5
    assert (tmp_path / "round_1.spec").exists() and (tmp_path / "round_2.spec").exists()
    dense = runner.slim(second)
    assert torch.allclose(dense(X), second(X), atol=1e-5)


def test_analysis_is_cached(net, tmp_path):
    calls = []

    def eval_fn(model):
        calls.append(1)
        return float(-model(X).pow(2).mean())

    runner = IterativePruningRunner(net, X, workdir=tmp_path)
    runner.ana(eval_fn, ratios=(0.5,))
    n = len(calls)
    assert n > 1 and list(tmp_path.glob("*.sens")) and list(tmp_path.glob("*.sens.png"))
    IterativePruningRunner(net, X, workdir=tmp_path).ana(eval_fn, ratios=(0.5,))
    assert len(calls) == n


def test_target_sets_channel_divisible(net, tmp_path):
    runner = IterativePruningRunner(net, X, target="DPUCZDX8G_ISA1_B4096", workdir=tmp_path)
    assert runner.channel_divisible == 16
    runner.ana(ratios=(0.5,))
    runner.prune(removal_ratio=0.2, mode="slim")
    assert all(k % 16 == 0 for k in runner.rounds[-1].spec.values())


def test_one_step_search_adaptive_bn_and_best(net, tmp_path):
    runner = OneStepPruningRunner(net, X, workdir=tmp_path)
    batches = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    result = runner.search(0.4, num_subnet=4, calib_batches=batches, tolerance=0.06)
    assert len(result.candidates) == 4
    for c in result.candidates:
        assert abs((1 - c.cost["macs"] / result.baseline["macs"]) - 0.4) <= 0.06
    best = runner.prune()
    assert best(X).shape == (2, 10)
    assert (tmp_path / "one_step.search").exists()


def test_errors(net, tmp_path):
    with pytest.raises(NpuflowError) as e:
        IterativePruningRunner(net, X, workdir=tmp_path).prune(removal_ratio=0.5)
    assert e.value.code == "NPF_PRUNE_NO_ANALYSIS"
    with pytest.raises(NpuflowError) as e:
        get_pruning_runner(net, X, "magic")
    assert e.value.code == "NPF_PRUNE_BAD_SETTING"
    with pytest.raises(NpuflowError) as e:
        OneStepPruningRunner(net, X, workdir=tmp_path).search(0.97, num_subnet=2, tolerance=0.0)
    assert e.value.code == "NPF_PRUNE_NO_CANDIDATE"


SCRIPT = '''
import torch
from torch import nn
torch.manual_seed(0)
def get_model():
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).eval()
def get_example_inputs():
    return torch.randn(2, 1, 8, 8)
'''


def test_cli_ana_and_run(cli, tmp_path):
    script = tmp_path / "user.py"
    script.write_text(SCRIPT)
    r = cli("prune", "ana", script, "--ratios", "0.25,0.5", "--workdir", tmp_path / "w")
    assert r.returncode == 0, r.stderr
    assert "sensitivity" in r.stdout and "0.25" in r.stdout
    out = tmp_path / "slim.pt"
    r = cli("prune", "run", script, "--ratio", "0.5", "-o", out, "--workdir", tmp_path / "w",
            "--target", "DPUCZDX8G_ISA1_B4096")
    assert r.returncode == 0, r.stderr
    model = torch.load(out, weights_only=False)
    assert model[0].out_channels == 16


def test_cli_errors(cli, tmp_path):
    r = cli("prune", "ana", tmp_path / "nope.py")
    assert r.returncode == 2 and "NPF_PRUNE_BAD_SCRIPT" in r.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("def get_model():\n    return None\n")
    r = cli("prune", "ana", bad)
    assert r.returncode == 2 and "NPF_PRUNE_BAD_SCRIPT" in r.stderr and "get_example_inputs" in r.stderr
    good = tmp_path / "good.py"
    good.write_text(SCRIPT)
    r = cli("prune", "ana", good, "--ratios", "1.5")
    assert r.returncode == 2 and "NPF_PRUNE_BAD_SETTING" in r.stderr and "Traceback" not in r.stderr


def test_latency_goal_uses_the_performance_estimate(net, tmp_path):
    runner = IterativePruningRunner(net, X, target="DPUCZDX8G_ISA1_B4096", workdir=tmp_path)
    runner.ana(ratios=(0.25, 0.5, 0.75))
    base = runner.baseline_cost["latency_ms"]
    goal = 0.85 * base
    runner.prune(target_latency_ms=goal, mode="slim")
    rec = runner.rounds[-1]
    assert rec.before["latency_ms"] == base and rec.after["latency_ms"] <= goal
    assert rec.after["macs"] < rec.before["macs"]


def test_channel_rounding_keeps_latency_steps(tmp_path):
    """On a 16-wide conv engine 40 output channels cost what 48 do: the estimate shows it."""
    from npuflow.prune.cost import CostModel
    from npuflow.targets import load_target

    def net(c):
        return nn.Sequential(nn.Conv2d(16, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 16, 3, padding=1)).eval()

    x = torch.randn(1, 16, 32, 32)
    cost = CostModel(x, load_target("DPUCZDX8G_ISA1_B4096"))
    c40, c48, c32 = (cost.measure(net(c)) for c in (40, 48, 32))
    assert c40["macs"] < c48["macs"]
    assert c32["latency_ms"] < c40["latency_ms"]
    assert c40["latency_ms"] >= 0.95 * c48["latency_ms"]
