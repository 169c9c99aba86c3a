"""The error catalog: every user-facing failure has a stable code, a message and a hint.

Codes follow ``NPF_<AREA>_<NAME>`` and never change meaning once released, so scripts and
support threads can rely on them (the role of Vitis AI's Appendix A error IDs).  Library code
raises :class:`NpuflowError` with a code and the values the message needs; the CLI prints
``ERROR [CODE] message`` plus the hint and exits non-zero, without a traceback.

``docs/errors.md`` is generated from :data:`CATALOG` (``python -m npuflow.errors > docs/errors.md``)
and a test keeps it in sync.

Each area has its own block below so that work on different stages touches different lines.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorSpec:
    """One catalog entry: ``message`` and ``hint`` are ``str.format`` templates."""

    code: str
    message: str
    hint: str


def _specs(*entries: tuple[str, str, str]) -> dict[str, ErrorSpec]:
    return {code: ErrorSpec(code, message, hint) for code, message, hint in entries}


# --- generic / CLI -------------------------------------------------------------------------
_GENERIC = _specs(
    ("NPF_IO_WRITE_FAILED", "cannot write {path}: {reason}",
     "Check that the output folder exists, is writable and has free space."),
)

# --- model loading -------------------------------------------------------------------------
_MODEL = _specs(
    ("NPF_MODEL_NOT_FOUND", "model file {path} does not exist",
     "Check the path; relative paths are resolved from the current directory."),
    ("NPF_MODEL_NOT_ONNX", "{path} is not an ONNX model: {reason}",
     "Pass an .onnx file exported by torch.onnx.export, tf2onnx, paddle2onnx or similar."),
    ("NPF_MODEL_CORRUPT", "{path} is truncated or corrupt: {reason}",
     "Re-export or re-download the model; the file does not parse as a complete ONNX protobuf."),
    ("NPF_MODEL_INVALID", "the model fails ONNX validation: {reason}",
     "Run onnx.checker.check_model on the file to see the offending node and fix the exporter."),
    ("NPF_MODEL_OPSET_UNSUPPORTED", "model opset {opset} is outside the supported range [{low}, {high}]",
     "Re-export the model with an opset in the supported range (13 to 21 are the most tested)."),
    ("NPF_MODEL_DYNAMIC_SHAPE", "input {input!r} has unresolved dynamic dimension(s) {dims}",
     "Freeze it with --input-shape {input} {example} (repeat the option for each input)."),
    ("NPF_MODEL_BAD_INPUT_SHAPE", "bad input shape {value!r}: {reason}",
     "Write shapes as dimensions joined by 'x', e.g. --input-shape images 1x3x224x224."),
    ("NPF_MODEL_UNKNOWN_INPUT", "the model has no input named {name!r}",
     "The model's inputs are: {inputs}."),
)

# --- targets -------------------------------------------------------------------------------
_TARGET = _specs(
    ("NPF_TARGET_UNKNOWN", "unknown target {value!r}",
     "Run `npuflow targets` for the list; a target can be named by name, fingerprint or arch.json."),
    ("NPF_TARGET_BAD_ARCH_JSON", "{path} is not a usable arch.json: {reason}",
     "An arch.json holds a JSON object with a \"target\" (name) or \"fingerprint\" key."),
    ("NPF_TARGET_BAD_FILE", "target file {path} is invalid: {reason}",
     "Fix the target description; docs/targets.md lists every field."),
)

# --- checker -------------------------------------------------------------------------------
_CHECK = _specs(
)

# --- quantizer -----------------------------------------------------------------------------
_QUANT = _specs(
)

# --- compiler / .npuf file -----------------------------------------------------------------
_COMPILE = _specs(
)

# --- runtime -------------------------------------------------------------------------------
_RUNTIME = _specs(
)

# --- build config (YAML) -------------------------------------------------------------------
_BUILD = _specs(
)

# --- performance / profiling ---------------------------------------------------------------
_PERF = _specs(
)

# --- PyTorch front end / pruning -----------------------------------------------------------
_TORCH = _specs(
)

# --- channel pruning -----------------------------------------------------------------------
_PRUNE = _specs(
    ("NPF_PRUNE_BAD_SETTING", "invalid pruning setting {name}={value!r}: {reason}",
     "See docs/pruning.md for the accepted values."),
    ("NPF_PRUNE_NO_ANALYSIS", "no sensitivity analysis or search result to prune from",
     "Call ana() (iterative) or search() (one-step) first, or run `npuflow prune ana`."),
    ("NPF_PRUNE_NO_CANDIDATE", "no subnet reached a MAC removal of {ratio} after {tries} tries",
     "Lower the ratio, raise the tolerance, or exclude fewer layers."),
    ("NPF_PRUNE_BAD_SCRIPT", "pruning script {path}: {reason}",
     "The script defines get_model() and get_example_inputs(); eval_fn(model), calib_batches() "
     "and finetune(model) are optional."),
)

CATALOG: dict[str, ErrorSpec] = {
    **_GENERIC, **_MODEL, **_TARGET, **_CHECK, **_QUANT, **_COMPILE, **_RUNTIME, **_BUILD,
    **_PERF, **_TORCH, **_PRUNE,
}


class NpuflowError(Exception):
    """The one exception type for user-facing failures.

    ``NpuflowError("NPF_MODEL_NOT_FOUND", path="m.onnx")`` formats the catalog's message and
    hint with the keyword arguments; a missing keyword is a programming error and fails loudly.
    """

    def __init__(self, code: str, **fields: object) -> None:
        if code not in CATALOG:
            raise KeyError(f"error code {code} is not in the catalog")
        spec = CATALOG[code]
        self.code = code
        self.fields = fields
        self.message = spec.message.format(**fields)
        self.hint = spec.hint.format(**fields)
        super().__init__(f"[{code}] {self.message}")

    def render(self) -> str:
        """The two lines the CLI prints."""
        return f"ERROR [{self.code}] {self.message}\n  hint: {self.hint}"


def catalog_markdown() -> str:
    """``docs/errors.md``: one row per code, generated so the docs cannot drift."""
    lines = [
        "# Error codes",
        "",
        "Generated from `npuflow/errors.py` by `python -m npuflow.errors > docs/errors.md`; do not edit.",
        "Every code is printed as `ERROR [CODE] message` followed by a hint, and the command exits non-zero.",
        "",
        "| code | message | hint |",
        "| --- | --- | --- |",
    ]
    for spec in sorted(CATALOG.values(), key=lambda s: s.code):
        lines.append(f"| `{spec.code}` | {_md(spec.message)} | {_md(spec.hint)} |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


if __name__ == "__main__":
    import sys

    sys.stdout.write(catalog_markdown())
