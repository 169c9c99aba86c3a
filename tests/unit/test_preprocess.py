"""Preprocessing nodes against OpenCV's colour conversions, on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from skimage import data as skdata
from sklearn.datasets import load_sample_images

from npuflow.passes.preprocess import InputPreprocess, insert_preprocessing, to_runtime_format


def _photos() -> list[np.ndarray]:
    """Two real RGB photos, cropped to small even sizes (fast, and nv12-compatible)."""
    astronaut = skdata.astronaut()[100:164, 120:216]  # 64x96
    china = load_sample_images().images[0][200:248, 300:380]  # 48x80
    return [np.ascontiguousarray(astronaut), np.ascontiguousarray(china)]


def _run(pre: InputPreprocess, buffer: np.ndarray) -> np.ndarray:
    """Insert ``pre`` in front of an Identity model and run it on ``buffer``."""
    x = helper.make_tensor_value_info(pre.name, TensorProto.FLOAT, list(pre.shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(pre.shape))
    graph = helper.make_graph([helper.make_node("Identity", [pre.name], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    model = insert_preprocessing(model, [pre])
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert tuple(sess.get_inputs()[0].shape) == pre.runtime_shape()
    return sess.run(None, {pre.name: buffer})[0]


def _nv12_from(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's own RGB -> I420 (BT.601 video range), rearranged to NV12 (interleaved UV)."""
    h, w, _ = rgb.shape
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    y = i420[:h]
    u = i420[h:h + h // 4].reshape(h // 2, w // 2)
    v = i420[h + h // 4:].reshape(h // 2, w // 2)
    uv = np.stack([u, v], axis=-1).reshape(h // 2, w)
    return np.concatenate([y, uv], axis=0)


def _yuv444_from_nv12(nv12: np.ndarray) -> np.ndarray:
    """Y, U, V planes at full size (chroma repeated over each 2x2 block), HWC."""
    h = nv12.shape[0] * 2 // 3
    y = nv12[:h]
    uv = nv12[h:].reshape(h // 2, -1, 2)
    uv = uv.repeat(2, axis=0).repeat(2, axis=1)
    return np.concatenate([y[..., None], uv], axis=-1)


def _spec(rgb, type_train, type_rt, layout_train="NCHW", layout_rt="NHWC", space="regular", **kw):
    h, w, c = rgb.shape
    c = 1 if type_train == "gray" else 3
    shape = (1, c, h, w) if layout_train == "NCHW" else (1, h, w, c)
    return InputPreprocess("data", shape, type_train, layout_train, type_rt, layout_rt, space, **kw)


def _to_hwc(out: np.ndarray, layout: str) -> np.ndarray:
    return out[0].transpose(1, 2, 0) if layout == "NCHW" else out[0]


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("train", ["rgb", "bgr"])
def test_nv12_bt601_video_matches_opencv(index, train):
    rgb = _photos()[index]
    nv12 = _nv12_from(rgb)
    code = cv2.COLOR_YUV2RGB_NV12 if train == "rgb" else cv2.COLOR_YUV2BGR_NV12
    expected = cv2.cvtColor(nv12, code).astype(np.float32)
    out = _run(_spec(rgb, train, "nv12", space="bt601_video"), nv12[None])
    diff = np.abs(_to_hwc(out, "NCHW") - expected)
    assert diff.max() <= 2.0 and diff.mean() < 0.6, (diff.max(), diff.mean())


@pytest.mark.parametrize("index", [0, 1])
def test_nv12_full_range_matches_opencv_ycrcb(index):
    rgb = _photos()[index]
    nv12 = _nv12_from(rgb)
    yuv = _yuv444_from_nv12(nv12)
    ycrcb = yuv[..., [0, 2, 1]]  # OpenCV's full-range BT.601 takes Y, Cr (V), Cb (U)
    expected = cv2.cvtColor(np.ascontiguousarray(ycrcb), cv2.COLOR_YCrCb2BGR).astype(np.float32)
    out = _run(_spec(rgb, "bgr", "nv12", layout_train="NHWC"), nv12[None])
    diff = np.abs(out[0] - expected)
    assert diff.max() <= 2.0 and diff.mean() < 0.6, (diff.max(), diff.mean())


@pytest.mark.parametrize("layout_rt", ["NHWC", "NCHW"])
def test_yuv444_full_range_matches_opencv(layout_rt):
    rgb = _photos()[1]
    ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    yuv = np.ascontiguousarray(ycrcb[..., [0, 2, 1]])
    expected = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB).astype(np.float32)
    feed = yuv[None] if layout_rt == "NHWC" else yuv.transpose(2, 0, 1)[None]
    out = _run(_spec(rgb, "rgb", "yuv444", layout_rt=layout_rt), np.ascontiguousarray(feed))
    diff = np.abs(_to_hwc(out, "NCHW") - expected)
    assert diff.max() <= 2.0, diff.max()


def test_yuv444_video_range_matches_opencv_nv12():
    """yuv444 in bt601_video range is nv12 without the chroma subsampling: same numbers as
    OpenCV's NV12 conversion once the chroma is repeated."""
    rgb = _photos()[0]
    nv12 = _nv12_from(rgb)
    expected = cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12).astype(np.float32)
    out = _run(_spec(rgb, "rgb", "yuv444", space="bt601_video"), _yuv444_from_nv12(nv12)[None])
    assert np.abs(_to_hwc(out, "NCHW") - expected).max() <= 2.0


def test_yuv444_to_yuv444_only_changes_layout():
    rgb = _photos()[0]
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]
    out = _run(_spec(rgb, "yuv444", "yuv444"), np.ascontiguousarray(yuv[None]))
    np.testing.assert_array_equal(_to_hwc(out, "NCHW"), yuv.astype(np.float32))


@pytest.mark.parametrize("src,dst,code", [("rgb", "bgr", cv2.COLOR_RGB2BGR), ("bgr", "rgb", cv2.COLOR_BGR2RGB)])
def test_rgb_bgr_swap_is_exact(src, dst, code):
    rgb = _photos()[0]
    image = rgb if src == "rgb" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    out = _run(_spec(rgb, dst, src), image[None])
    np.testing.assert_array_equal(_to_hwc(out, "NCHW"), cv2.cvtColor(image, code).astype(np.float32))


def test_bgr_mean_and_scale_in_nhwc_model():
    """The seed's example: (x - mean) * scale per channel, into an NHWC float model."""
    bgr = cv2.cvtColor(_photos()[1], cv2.COLOR_RGB2BGR)
    mean, scale = (103.94, 116.78, 123.68), (0.017,)
    out = _run(_spec(bgr, "bgr", "bgr", layout_train="NHWC", mean=mean, scale=scale), bgr[None])
    expected = (bgr.astype(np.float32) - np.array(mean, np.float32)) * np.float32(0.017)
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-4)


def test_gray_data_scale():
    gray = cv2.cvtColor(_photos()[0], cv2.COLOR_RGB2GRAY)
    pre = _spec(gray[..., None], "gray", "gray", layout_rt="NCHW", scale=(1 / 255,))
    out = _run(pre, gray[None, None])
    np.testing.assert_allclose(out[0, 0], gray / np.float32(255), atol=1e-6)


def test_featuremap_layout_passthrough():
    fm = np.random.default_rng(0).standard_normal((1, 6, 5, 4)).astype(np.float32)  # NHWC
    pre = InputPreprocess("data", (1, 4, 6, 5), "featuremap", "NCHW", "featuremap", "NHWC")
    np.testing.assert_array_equal(_run(pre, fm), fm.transpose(0, 3, 1, 2))


def test_to_runtime_format_nv12_matches_opencv_encoder():
    """The numpy encoder used for calibration agrees with OpenCV's RGB -> I420."""
    rgb = _photos()[0]
    pre = _spec(rgb, "rgb", "nv12", space="bt601_video")
    ours = to_runtime_format(rgb.transpose(2, 0, 1)[None], pre)[0].astype(int)
    ref = _nv12_from(rgb).astype(int)
    h = rgb.shape[0]
    assert np.abs(ours[:h] - ref[:h]).max() <= 1
    chroma = np.abs(ours[h:] - ref[h:])  # OpenCV's 2x2 chroma filter differs slightly at edges
    assert chroma.mean() < 1.0 and np.percentile(chroma, 99) <= 5, (chroma.mean(), np.percentile(chroma, 99))


@pytest.mark.parametrize("rt", ["nv12", "yuv444", "bgr"])
def test_to_runtime_format_round_trips_through_the_graph(rt):
    rgb = _photos()[1]
    pre = _spec(rgb, "rgb", rt, layout_rt="NHWC")
    sample = rgb.transpose(2, 0, 1)[None]
    back = _run(pre, to_runtime_format(sample, pre))
    tolerance = 40.0 if rt == "nv12" else 3.0  # nv12 loses chroma detail at sharp edges
    diff = np.abs(back - sample)
    assert diff.max() <= tolerance and diff.mean() < 3.0, (diff.max(), diff.mean())


@pytest.mark.parametrize("mean,scale", [((103.94, 116.78, 123.68), (0.017,)), ((127.0,), (1 / 128,)),
                                        ((123.7, 116.3, 103.5), (0.0171, 0.0175, 0.0174))])
def test_nv12_with_normalisation_folded_into_the_colour_conv(mean, scale):
    """Colour conversion and (x - mean) * scale are one Conv plus the saturation moved into the
    normalised domain: same numbers as OpenCV's conversion followed by the normalisation."""
    rgb = _photos()[0]
    nv12 = _nv12_from(rgb)
    expected = cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12).astype(np.float32)
    expected = (expected - np.array(mean, np.float32)) * np.array(scale, np.float32)
    out = _run(_spec(rgb, "bgr", "nv12", space="bt601_video", mean=mean, scale=scale), nv12[None])
    diff = np.abs(_to_hwc(out, "NCHW") - expected)
    assert diff.max() <= 2.0 * max(scale) + 1e-5, diff.max()
