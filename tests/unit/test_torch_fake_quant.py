"""The torch fake quantization is numerics.py, bit for bit, with straight-through gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npuflow import numerics as nm
from npuflow.fake_quant import LOG2_THRESHOLD_ROUND_MODE, QuantSpec, fake_quantize, quantize_codes, round_ste
from npuflow.torch.quantizer import FakeQuantizer

MODES = [m for m in nm.RoundMode]


def _values(seed: int, scale: float) -> np.ndarray:
    """Random values plus exact ties (k + 0.5) * scale and values next to ties."""
    rng = np.random.default_rng(seed)
    rand = rng.normal(0, 60 * scale, 4000).astype(np.float32)
    ties = ((np.arange(-140, 140) + 0.5) * scale).astype(np.float32)
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    big = np.array([1e9, -1e9, 3.4e38, -3.4e38, 0.0, -0.0], dtype=np.float32)
    return np.concatenate([rand, ties, near, big]).astype(np.float32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [2.0 ** -5, 2.0 ** 3, 0.0372, 1.3e-3])
@pytest.mark.parametrize("bits, signed, narrow", [(8, True, False), (8, True, True), (4, True, False), (8, False, False), (16, True, False)])
def test_fake_quant_equals_numerics_bit_for_bit(mode, scale, bits, signed, narrow):
    x = _values(bits + int(scale * 1000), scale)
    zp = 0 if signed else 7
    spec = QuantSpec(bits, signed, narrow, mode)
    with np.errstate(over="ignore"):  # 3.4e38 / small scale overflows to inf, then saturates
        ref_q = nm.quantize(x, scale, zp, bits=bits, signed=signed, narrow=narrow, round_mode=mode)
    ref = nm.dequantize(ref_q, scale, zp)
    s = torch.tensor(np.float32(scale))
    z = torch.tensor(zp, dtype=torch.int32)
    _, codes = quantize_codes(torch.from_numpy(x), s, z, spec)
    assert np.array_equal(codes.numpy().astype(np.int64), ref_q.astype(np.int64))
    got = fake_quantize(torch.from_numpy(x), s, z, spec).numpy()
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.int32), ref.view(np.int32))  # bit patterns, -0.0 included


@pytest.mark.parametrize("mode", MODES)
def test_per_channel_equals_numerics(mode):
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)
    scales = nm.float_scale(np.abs(w).reshape(6, -1).max(axis=1), 8, narrow=True)
    w[0, 0, 0, :] = (np.array([0.5, 1.5, -2.5]) * scales[0]).astype(np.float32)  # ties
    ref = nm.fake_quantize(w, scales, np.zeros(6, np.int64), bits=8, narrow=True, round_mode=mode, axis=0)
    got = fake_quantize(torch.from_numpy(w), torch.from_numpy(scales), torch.zeros(6, dtype=torch.int32),
                        QuantSpec(8, True, True, mode), axis=0).numpy()
    assert np.array_equal(got, ref)


def test_straight_through_gradient_passes_inside_and_stops_outside_the_range():
    spec = QuantSpec(8, True, False, nm.RoundMode.HALF_UP)
    x = torch.tensor([-200.0, -127.6, -3.3, 0.2, 126.4, 127.6, 500.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor(1.0), 0, spec)
    y.backward(torch.ones_like(y))
    # codes: -128 (clipped), -128 (rounds to -128: inside), -3, 0, 126, 128 -> clipped, clipped
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_scale_gradient_is_the_lsq_one():
    spec = QuantSpec(8, True, False, nm.RoundMode.HALF_EVEN)
    x = torch.tensor([0.3, 1.26, 500.0, -500.0])
    s = torch.tensor(0.1, requires_grad=True)
    fake_quantize(x, s, 0, spec).sum().backward()
    # inside: round(x/s) - x/s ; outside: the clipped code (127, -128)
    expected = (3 - 3.0) + (13 - 12.6) + 127 + (-128)
    assert s.grad.item() == pytest.approx(expected, abs=1e-4)


def test_round_ste_rounds_forward_and_is_identity_backward():
    v = torch.tensor([0.4, 0.5, 1.7, -0.5], requires_grad=True)
    out = round_ste(v, LOG2_THRESHOLD_ROUND_MODE)
    assert out.tolist() == [0.0, 1.0, 2.0, 0.0]
    out.sum().backward()
    assert v.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_pow2_observer_then_learnable_threshold_trains_a_power_of_two_scale():
    torch.manual_seed(0)
    q = FakeQuantizer(QuantSpec(8, True, False, nm.RoundMode.HALF_UP), power_of_two=True, learnable=True)
    q.train()
    x = torch.randn(256) * 3
    q(x)
    fix = int(q.fix_pos())
    assert fix >= int(nm.pow2_fix_pos(float(x.abs().max())))  # "diffs" may clip the largest values
    q.freeze()
    opt = torch.optim.Adam(q.parameters(), lr=0.5)
    for _ in range(20):  # a much larger input range: the threshold must grow
        opt.zero_grad()
        big = torch.randn(256) * 40
        (q(big) - big).pow(2).mean().backward()
        opt.step()
    new_fix = q.fix_pos()
    assert new_fix is not None and int(new_fix) < fix  # coarser power-of-two scale
    scale = float(q.quant_params()[0].detach())
    assert scale == 2.0 ** -int(new_fix)


def test_frozen_state_survives_a_state_dict_load():
    """A resumed quantizer must stay frozen: forward reads a Python copy of the flag, so loading
    the buffer has to refresh it, or the resumed run would re-observe and move every scale."""
    spec = QuantSpec(8, True, False, nm.RoundMode.HALF_UP)
    frozen = FakeQuantizer(spec, power_of_two=True)
    frozen.train()
    frozen(torch.full((16,), 3.0))  # observes: fix position 5
    frozen.freeze()
    fresh = FakeQuantizer(spec, power_of_two=True)
    fresh.train()
    fresh.load_state_dict(frozen.state_dict())
    assert "frozen" in fresh.extra_repr()
    fresh(torch.full((16,), 100.0))  # would pick a coarser position if it still observed
    assert int(fresh.fix_pos()) == int(frozen.fix_pos()) == 5
    fresh.unfreeze()
    fresh(torch.full((16,), 100.0))
    assert int(fresh.fix_pos()) < 5


def test_float_weight_observer_matches_numerics_scale():
    q = FakeQuantizer(QuantSpec(8, True, True, nm.RoundMode.HALF_EVEN), power_of_two=False, axis=0,
                      channels=4, method="max", weight=True)
    w = torch.randn(4, 3, 3, 3)
    q(w)
    ref = nm.float_scale(w.abs().amax(dim=(1, 2, 3)).numpy(), 8, narrow=True)
    assert np.array_equal(q.scale.numpy(), ref)


def _reference_fake_quant(x, scale, zp, spec, axis):
    """The float64 definition (quantize_codes / dequantize_codes) and its straight-through
    gradients written out: what the one-pass float32 FakeQuantSTE must equal bit for bit."""
    from npuflow.fake_quant import dequantize_codes

    unclipped, q = quantize_codes(x, scale, zp, spec, axis)
    out = dequantize_codes(q, scale, zp, axis)
    inside = (unclipped >= spec.qmin) & (unclipped <= spec.qmax)
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    view = shape if axis is not None else ()
    s, z = scale.reshape(view), zp.to(torch.float32).reshape(view)
    code = q.to(torch.float32) - z
    d_out_d_s = torch.where(inside, code - x / s, code)
    return out, inside.to(torch.float32), d_out_d_s


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits, signed, zp, scale", [(8, True, 0, 2.0 ** -4), (8, False, 9, 0.0372), (4, True, 0, 0.5),
                                                     (16, True, 0, 1.3e-3), (32, True, 0, 2.0 ** -20)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_one_pass_forward_and_gradients_equal_the_float64_definition(mode, bits, signed, zp, scale, per_channel):
    spec = QuantSpec(bits, signed, False, mode)
    edges = np.array([spec.qmax + 1, spec.qmin - 1, spec.qmax, spec.qmin, spec.qmax + 0.5, spec.qmin - 0.5]) + zp
    values = np.concatenate([_values(bits, scale * (2.0 ** 24 if bits == 32 else 1.0)), edges * scale])
    x = torch.from_numpy(values.astype(np.float32)).reshape(2, -1)  # the range's edges: 2**31 * s for int32
    if per_channel:
        s = torch.tensor([scale, scale * 4], dtype=torch.float32, requires_grad=True)
        z, axis = torch.full((2,), zp, dtype=torch.int32), 0
    else:
        s, z, axis = torch.tensor(np.float32(scale), requires_grad=True), torch.tensor(zp, dtype=torch.int32), None
    xg = x.clone().requires_grad_(True)
    grad = torch.linspace(-1.0, 1.0, x.numel()).reshape(x.shape)
    with np.errstate(over="ignore"):
        out = fake_quantize(xg, s, z, spec, axis)
        out.backward(grad)
        ref, inside, d_out_d_s = _reference_fake_quant(x, s.detach(), z, spec, axis)
    assert np.array_equal(out.detach().numpy().view(np.int32), ref.numpy().view(np.int32))
    assert torch.equal(xg.grad, grad * inside)
    ref_grad_s = (grad * d_out_d_s).sum(dim=1) if per_channel else (grad * d_out_d_s).sum()
    assert torch.equal(s.grad, ref_grad_s)
    with torch.no_grad():  # the evaluation path (no autograd bookkeeping) computes the same output
        assert torch.equal(fake_quantize(x, s, z, spec, axis), out.detach())
