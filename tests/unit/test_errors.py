"""The error catalog: generated docs stay in sync, and every code is exercised by some test."""

from __future__ import annotations

import re
from pathlib import Path

from npuflow.errors import CATALOG, NpuflowError, catalog_markdown

REPO = Path(__file__).resolve().parents[2]


def test_docs_errors_md_is_generated_from_catalog():
    assert (REPO / "docs/errors.md").read_text() == catalog_markdown(), (
        "docs/errors.md is stale: run `python -m npuflow.errors > docs/errors.md`"
    )


def test_codes_are_well_formed():
    for code in CATALOG:
        assert re.fullmatch(r"NPF_[A-Z]+_[A-Z0-9_]+", code), code


def test_every_code_is_used_by_a_test():
    """Each error code has a test: its code string appears in a test file other than this one."""
    sources = "\n".join(
        p.read_text() for p in (REPO / "tests").rglob("test_*.py") if p.name != "test_errors.py"
    )
    missing = [code for code in CATALOG if code not in sources]
    assert not missing, f"error codes without a test: {missing}"


def test_render_names_code_message_and_hint():
    err = NpuflowError("NPF_MODEL_NOT_FOUND", path="nope.onnx")
    text = err.render()
    assert text.startswith("ERROR [NPF_MODEL_NOT_FOUND]") and "nope.onnx" in text and "hint:" in text


def test_error_survives_pickling() -> None:
    """Process workers (scale-out) send errors back pickled, and a quantized model keeps its
    ``problem``: unpickling used to call ``__init__`` with the message as the code (a KeyError)."""
    import pickle

    from npuflow.errors import NpuflowError

    err = NpuflowError("NPF_MODEL_NOT_FOUND", path="m.onnx")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, NpuflowError)
    assert (back.code, back.fields, back.render()) == (err.code, err.fields, err.render())
