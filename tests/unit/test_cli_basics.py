"""CLI plumbing: coded errors without tracebacks, usage errors, the targets command."""

from __future__ import annotations


def test_targets_lists_and_shows(cli):
    r = cli("targets")
    assert r.returncode == 0 and "DPUCZDX8G_ISA1_B4096" in r.stdout and "cpu-int8" in r.stdout
    r = cli("targets", "0x101000016010407")
    assert r.returncode == 0 and "DPU_Conv2d" in r.stdout and "half_up" in r.stdout


def test_unknown_target_is_a_coded_error_without_traceback(cli):
    r = cli("targets", "DPU_NOPE")
    assert r.returncode == 2
    assert "ERROR [NPF_TARGET_UNKNOWN]" in r.stderr and "DPU_NOPE" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_usage_error_exit_code(cli):
    r = cli("targets", "--no-such-flag")
    assert r.returncode == 2 and "Traceback" not in r.stderr
