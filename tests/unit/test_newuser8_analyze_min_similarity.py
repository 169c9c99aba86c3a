"""``npuflow analyze mixed-precision --min-similarity 1.5`` (a cosine cannot exceed 1; new-user round
8): analyze ran the whole search, raised every layer to float and printed "target similarity 1.50000
NOT met" with a config of overrides, while ``npuflow quantize --min-similarity 1.5`` is refused as a
usage error.  Both refuse it now, before any work."""

from __future__ import annotations

import pytest

from npuflow.cli.app import main


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_out_of_range_similarity_is_a_usage_error(value, tmp_path, capsys):
    rc = main(["analyze", "mixed-precision", str(tmp_path / "m.onnx"), "-t", "cpu-int8", "--calib", str(tmp_path),
               "--min-similarity", value])
    assert rc == 2
    assert "--min-similarity" in capsys.readouterr().err
