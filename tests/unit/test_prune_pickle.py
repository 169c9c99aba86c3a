"""``npuflow prune run`` saves the slim model with torch.save, which pickles classes by reference:
a model class defined inside a function (or by exec) made the run end in pickle's traceback after
pruning had finished.  It is now refused before pruning, with the class named."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from npuflow.errors import NpuflowError
from npuflow.prune.script import check_saveable

LOCAL_CLASS_SCRIPT = '''
import torch
from torch import nn
def get_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 32, 3, padding=1)
            self.c2 = nn.Conv2d(32, 32, 3, padding=1)
            self.fc = nn.Linear(32 * 8 * 8, 10)
        def forward(self, x):
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))
    return nn.Sequential(Net()).eval()
def get_example_inputs():
    return torch.randn(2, 1, 8, 8)
'''

TOP_LEVEL_SCRIPT = LOCAL_CLASS_SCRIPT.replace("def get_model():\n    class Net", "class Net").replace(
    "    return nn.Sequential(Net()).eval()", "def get_model():\n    return nn.Sequential(Net()).eval()")


def _local_model() -> nn.Module:
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x)

    return nn.Sequential(nn.ReLU(), Local())


def test_check_saveable_names_the_local_class():
    with pytest.raises(NpuflowError) as e:
        check_saveable(_local_model(), "user.py")
    assert e.value.code == "NPF_PRUNE_BAD_SCRIPT"
    assert "_local_model.<locals>.Local" in e.value.message and "top level" in e.value.message


def test_check_saveable_names_an_exec_class():
    ns: dict = {}
    exec("from torch import nn\nclass Made(nn.Module):\n    pass\n", ns)  # noqa: S102 - the reported case
    with pytest.raises(NpuflowError) as e:
        check_saveable(nn.Sequential(ns["Made"]()), "user.py")
    assert "Made" in e.value.message


def test_check_saveable_accepts_importable_classes():
    check_saveable(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), "user.py")


def test_cli_refuses_before_pruning(cli, tmp_path):
    script = tmp_path / "user.py"
    script.write_text(LOCAL_CLASS_SCRIPT)
    work = tmp_path / "w"
    r = cli("prune", "run", script, "--ratio", "0.5", "-o", tmp_path / "slim.pt", "--workdir", work)
    assert r.returncode == 2 and "NPF_PRUNE_BAD_SCRIPT" in r.stderr and "Traceback" not in r.stderr
    assert "get_model.<locals>.Net" in r.stderr
    assert not list(work.glob("*.sens")) and not list(work.glob("round_*.spec"))  # no pruning was done
    assert not (tmp_path / "slim.pt").exists()


def test_top_level_class_saves_and_loads_in_a_fresh_process(cli, tmp_path):
    script = tmp_path / "user.py"
    script.write_text(TOP_LEVEL_SCRIPT)
    out = tmp_path / "slim.pt"
    r = cli("prune", "run", script, "--ratio", "0.5", "-o", out, "--workdir", tmp_path / "w",
            "--target", "DPUCZDX8G_ISA1_B4096")
    assert r.returncode == 0, r.stderr
    code = (f"import torch; from npuflow.prune.script import load_script; load_script({str(script)!r}); "
            f"m = torch.load({str(out)!r}, weights_only=False); print(m[0].c1.out_channels)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == 16
