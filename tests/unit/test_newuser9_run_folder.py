"""``npuflow run MODEL.npuf -i DIR -o OUTDIR`` (new-user round 9: hrt_model_exec, rknn and ONNX
Runtime script users point the runner at a folder of samples).  Before, a folder was refused with
``NPF_RUNTIME_BAD_INPUT_FILE`` and a shell loop that loaded the model once per sample; now each
``.npy``/``.npz`` of the folder is one sample, run in sorted order with the model loaded once, its
outputs written as ``OUTDIR/<file stem>/NAME.npy`` (what ``-o DIR`` holds for one sample).  A bad
file is a coded error naming that file, and no sample folder holds a partial set of outputs."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.fixture_models import mnist_cnn


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_npy_folder):
    """The MNIST CNN quantized on 4 real digits and compiled for cpu-int8, and 3 other digits."""
    files = sorted(mnist_npy_folder.iterdir())
    calib = [np.load(f) for f in files[:4]]
    root = tmp_path_factory.mktemp("run_folder")
    npuf = npuflow.compile(npuflow.quantize(mnist_cnn(), calib, "cpu-int8", warn=False), "cpu-int8").save(
        root / "m.npuf")
    return npuf, [np.load(f) for f in files[4:7]]


def _text(res) -> str:
    return " ".join((res.stdout + res.stderr).split())


def test_a_folder_runs_each_sample_and_writes_its_outputs(digits, tmp_path, cli):
    npuf, samples = digits
    folder = tmp_path / "digits"
    folder.mkdir()
    np.save(folder / "d0.npy", samples[0])
    np.savez(folder / "d1.npz", input=samples[1])  # a .npz, its array named as the input
    np.save(folder / "d2.npy", samples[2])
    (folder / "out").mkdir()  # an output folder kept inside the input folder is not a sample
    (folder / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "outputs"
    res = cli("run", npuf, "-i", folder, "-o", out)
    assert res.returncode == 0, res.stdout + res.stderr
    text = _text(res)
    assert "ran 3 sample(s) of" in text and "sub-folder(s) not read: out" in text and "Traceback" not in text
    assert sorted(p.name for p in out.iterdir()) == ["d0", "d1", "d2"]  # no staging folder left
    session = npuflow.Session(npuf)
    for k, sample in enumerate(samples):
        assert [p.name for p in (out / f"d{k}").iterdir()] == ["logits.npy"]
        assert np.array_equal(np.load(out / f"d{k}" / "logits.npy"), session.run({"input": sample})["logits"])
    # NAME=DIR is the same folder for the named input; the single-file form still writes -o DIR/NAME.npy
    res = cli("run", npuf, "-i", f"input={folder}", "-o", tmp_path / "named")
    assert res.returncode == 0 and np.array_equal(np.load(tmp_path / "named" / "d2" / "logits.npy"),
                                                  np.load(out / "d2" / "logits.npy"))
    res = cli("run", npuf, "-i", folder / "d0.npy", "-o", tmp_path / "one")
    assert res.returncode == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["logits.npy"]
    assert np.array_equal(np.load(tmp_path / "one" / "logits.npy"), np.load(out / "d0" / "logits.npy"))


@pytest.mark.parametrize("bad", ["corrupt", "shape"])
def test_a_bad_file_is_a_coded_error_naming_it(digits, tmp_path, cli, bad):
    npuf, samples = digits
    folder = tmp_path / "digits"
    folder.mkdir()
    np.save(folder / "a.npy", samples[0])
    if bad == "corrupt":
        (folder / "b.npy").write_bytes(b"\x93NUMPY garbage")
    else:
        np.save(folder / "b.npy", samples[1][0])  # 1x28x28 for a 1x1x28x28 input
    np.save(folder / "c.npy", samples[2])
    out = tmp_path / "outputs"
    res = cli("run", npuf, "-i", folder, "-o", out)
    text = _text(res)
    assert res.returncode == 2 and "NPF_RUNTIME_BAD_INPUT_FILE" in text and "Traceback" not in text
    assert f"cannot read input '{folder / 'b.npy'}'" in text
    if bad == "shape":
        assert "NPF_RUNTIME_INPUT_SHAPE" in text
    # a's outputs are complete; b has none that could pass for complete, c did not run
    assert np.array_equal(np.load(out / "a" / "logits.npy"), npuflow.Session(npuf).run({"input": samples[0]})["logits"])
    assert not (out / "b" / "logits.npy").exists() and not (out / "c").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_folder_refusals_come_before_any_sample_runs(digits, tmp_path, cli):
    npuf, samples = digits
    folder = tmp_path / "digits"
    folder.mkdir()
    np.save(folder / "a.npy", samples[0])
    out = tmp_path / "outputs"
    cases = [(["-i", folder], "needs -o OUTDIR"),
             (["-i", folder, "-i", f"x={folder / 'a.npy'}", "-o", out], "a folder of samples is the only -i")]
    (folder / "z.png").write_bytes(b"\x89PNG")
    cases.append((["-i", folder, "-o", out], "not a sample"))
    for args, words in cases:
        res = cli("run", npuf, *args)
        text = _text(res)
        assert res.returncode == 2 and "NPF_RUNTIME_BAD_INPUT_FILE" in text and words in text, text
        assert "Traceback" not in text and not out.exists()
    assert str(folder / "z.png") in text  # the stray file is named
    (folder / "z.png").unlink()
    np.savez(folder / "a.npz", input=samples[1])
    res = cli("run", npuf, "-i", folder, "-o", out)
    assert res.returncode == 2 and "a.npy has the same name" in _text(res) and not out.exists()
