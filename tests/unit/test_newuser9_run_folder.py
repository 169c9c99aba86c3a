"""``npuflow run MODEL.npuf -i DIR`` (new-user round 9: hrt_model_exec and VART users point the
runner at a folder of samples): was ``NPF_RUNTIME_BAD_INPUT_FILE`` "[Errno 21] Is a directory" with
the hint "Write inputs as NAME=FILE.npy", which did not say how to run a folder.  It now says that
run reads one sample, and gives the shell loop (and ``npuflow.Session``) for a folder; the loop it
shows runs."""

from __future__ import annotations

import subprocess

import numpy as np

import npuflow
from tests.fixture_models import mnist_cnn


def test_a_folder_as_input_says_how_to_run_each_file(tmp_path, cli):
    rng = np.random.default_rng(0)
    samples = [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(2)]
    npuf = npuflow.compile(npuflow.quantize(mnist_cnn(), samples, "cpu-int8", warn=False), "cpu-int8").save(
        tmp_path / "m.npuf")
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, s in enumerate(samples):
        np.save(folder / f"d{i}.npy", s)
    for spec in (str(folder), f"input={folder}"):
        res = cli("run", npuf, "-i", spec)
        assert res.returncode != 0 and "NPF_RUNTIME_BAD_INPUT_FILE" in res.stdout + res.stderr
        text = " ".join((res.stdout + res.stderr).split())
        assert "it is a folder" in text and "Errno" not in text and "Traceback" not in text
    shown = text.split("For every file of a folder: ")[1].split(", or npuflow.Session")[0]
    loop = shown.replace("npuflow run MODEL.npuf", f"python -m npuflow run {npuf}")
    subprocess.run(["bash", "-c", loop], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    session = npuflow.Session(npuf)
    for i, s in enumerate(samples):
        assert np.array_equal(np.load(tmp_path / "out" / f"d{i}" / "logits.npy"), session.run({"input": s})["logits"])
