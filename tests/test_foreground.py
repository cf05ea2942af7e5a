"""Foreground extraction: alpha, OpenCV fallback (border colour model + GrabCut), optional SAM / rembg errors."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from syncdreamer.pipelines import foreground as fgm
from syncdreamer.pipelines.errors import InputError
from syncdreamer.pipelines.foreground import ForegroundConfig, extract_foreground


def scene(size=128, background=(245, 245, 245), noise=0.0, gradient=False, seed=0):
    """RGB picture with a two-coloured object (a body and a head); returns (rgb uint8, truth mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.empty((size, size, 3), np.float32)
    img[:] = background
    if gradient:
        img += (yy / size * 30.0)[..., None]
    body = (np.abs(xx - 64) < 28) & (yy > 60) & (yy < 110)
    head = (xx - 64) ** 2 + (yy - 45) ** 2 < 20 ** 2
    img[body] = (30, 90, 200)
    img[head] = (220, 140, 40)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), body | head


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("kw", [dict(), dict(noise=6.0), dict(gradient=True), dict(background=(20, 20, 20))])
def test_opencv_recovers_object(kw):
    rgb, truth = scene(**kw)
    fg = extract_foreground(rgb, "opencv")
    assert fg.method == "opencv" and fg.rgba.shape == (128, 128, 4)
    assert iou(fg.mask, truth) > 0.95
    assert np.array_equal(fg.rgba[..., 3] > 0, fg.mask)


def test_opencv_blank_picture_is_empty_mask():
    with pytest.raises(InputError, match="empty mask"):
        extract_foreground(np.full((64, 64, 3), 200, np.uint8), "opencv")


def test_alpha_method_and_auto(monkeypatch):
    rgb, truth = scene()
    rgba = np.dstack([rgb, truth.astype(np.uint8) * 255])
    fg = extract_foreground(rgba, "alpha")
    assert fg.method == "alpha" and np.array_equal(fg.mask, truth)
    assert extract_foreground(rgba, "auto").method == "alpha"
    opaque = np.dstack([rgb, np.full(truth.shape, 255, np.uint8)])     # constant alpha: not a real mask
    with pytest.MonkeyPatch.context() as mp:  # rembg absent: auto uses OpenCV (rembg present: see below)
        mp.setattr(fgm, "rembg_available", lambda: False)
        fg = extract_foreground(opaque, "auto")
        assert fg.method == "opencv" and iou(fg.mask, truth) > 0.95
    with pytest.raises(InputError, match="no alpha channel"):
        extract_foreground(rgb, "alpha")
    with pytest.raises(InputError, match="empty mask"):
        extract_foreground(np.zeros((16, 16, 4), np.uint8), "alpha")
    with pytest.raises(InputError, match="unknown foreground method"):
        extract_foreground(rgb, "magic")


def test_sam_and_rembg_errors_are_one_line(tmp_path, monkeypatch):
    rgb, _ = scene()
    with pytest.raises(InputError, match="sam_checkpoint"):
        extract_foreground(rgb, "sam")
    with pytest.raises(InputError, match="SAM checkpoint not found"):
        extract_foreground(rgb, "sam", ForegroundConfig(sam_checkpoint=str(tmp_path / "nope.pth")))
    (tmp_path / "sam.pth").write_bytes(b"x")
    monkeypatch.setattr(fgm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="segment_anything"):
        extract_foreground(rgb, "sam", ForegroundConfig(sam_checkpoint=str(tmp_path / "sam.pth")))
    with pytest.raises(InputError, match="rembg"):
        extract_foreground(rgb, "rembg")
    assert extract_foreground(rgb, "auto").method == "opencv"  # no rembg -> OpenCV fallback


def stub_rembg(monkeypatch, alpha=None, error=None) -> dict:
    """Install a stand-in ``rembg`` module (NOT the real package): ``remove`` returns RGBA with ``alpha``
    or raises ``error``. Returns what it was called with."""
    import sys
    import types

    seen = {}
    stub = types.ModuleType("rembg")

    def new_session(name):
        seen["model"] = name
        return f"session({name})"

    def remove(image, session):
        seen["image"], seen["session"] = image.shape, session
        if error is not None:
            raise error
        return np.dstack([image, alpha])

    stub.new_session, stub.remove = new_session, remove
    monkeypatch.setitem(sys.modules, "rembg", stub)
    monkeypatch.setattr(fgm, "rembg_available", lambda: True)
    return seen


def test_auto_prefers_rembg_and_falls_back_to_opencv_with_a_stub_rembg(monkeypatch):
    """The rembg branch of ``auto`` with a STUB ``rembg`` module (the real package, when installed, is
    tested by test_rembg_real_package): its mask is used as is; a failing rembg falls back to OpenCV."""
    rgb, truth = scene()
    other = np.zeros_like(truth)
    other[40:90, 30:100] = True                       # a mask OpenCV would never find: proves it is rembg's
    seen = stub_rembg(monkeypatch, alpha=other.astype(np.uint8) * 255)
    fg = extract_foreground(rgb, "auto", ForegroundConfig(rembg_model="isnet-general-use"))
    assert fg.method == "rembg" and np.array_equal(fg.mask, other)
    assert seen == {"model": "isnet-general-use", "image": (128, 128, 3), "session": "session(isnet-general-use)"}
    stub_rembg(monkeypatch, error=RuntimeError("model file missing\nsecond line"))
    fg = extract_foreground(rgb, "auto")
    assert fg.method == "opencv" and iou(fg.mask, truth) > 0.95
    with pytest.raises(InputError, match=r"rembg failed \(RuntimeError: model file missing\)"):
        extract_foreground(rgb, "rembg")


def _rembg_model_file(model: str):
    import os
    from pathlib import Path

    return Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net")).expanduser() / f"{model}.onnx"


@pytest.mark.skipif(not fgm.rembg_available(), reason="optional package rembg not installed")
def test_rembg_real_package():
    """The real ``rembg`` (where installed, with its model file on disk: tests never download)."""
    cfg = ForegroundConfig()
    if not _rembg_model_file(cfg.rembg_model).is_file():
        pytest.skip(f"rembg installed but its model file {_rembg_model_file(cfg.rembg_model)} is missing "
                    "(tests do not download it)")
    rgb, truth = scene()
    fg = extract_foreground(rgb, "rembg", cfg)
    assert fg.method == "rembg" and iou(fg.mask, truth) > 0.9
    assert extract_foreground(rgb, "auto", cfg).method == "rembg"


def tiny_sam(checkpoint=None):
    """A real ``segment_anything.modeling.Sam`` with tiny numbers (128 px, one ViT block, 32 channels), built
    like the package's own ``build_sam_vit_*`` so that the real predictor, transforms and decoder run fast."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, size = 32, 128
    sam = Sam(image_encoder=ImageEncoderViT(img_size=size, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                                            out_chans=dim, use_rel_pos=True, window_size=4, global_attn_indexes=()),
              prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // 16, size // 16),
                                           input_image_size=(size, size), mask_in_chans=4),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2,
                                       iou_head_hidden_dim=dim,
                                       transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64,
                                                                     num_heads=2)),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint))
    return sam


@pytest.mark.slow  # builds and runs a (tiny) Sam twice: minutes on a loaded 2-core machine
@pytest.mark.skipif(importlib.util.find_spec("segment_anything") is None,
                    reason="optional package segment_anything not installed")
def test_sam_real_package_with_random_weights(tmp_path, monkeypatch):
    """The real ``segment_anything`` package (no official weights here: a tiny randomly initialised Sam,
    registered in the package's own ``sam_model_registry``): our SAM branch must give exactly what the real
    SamPredictor gives for the OpenCV box prompt plus the configured margin, best-scoring of the three
    masks (or the empty-mask error when that one is empty)."""
    import torch
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(tiny_sam().state_dict(), ckpt)
    monkeypatch.setitem(sam_model_registry, "tiny", tiny_sam)
    rgb, _ = scene()
    cfg = ForegroundConfig(sam_checkpoint=str(ckpt), sam_model_type="tiny", sam_box_margin=0.05)
    ys, xs = np.nonzero(fgm.opencv_mask(rgb, cfg))
    m = 0.05 * 128
    box = np.clip(np.array([xs.min() - m, ys.min() - m, xs.max() + m, ys.max() + m]), 0, 127).astype(np.float32)
    predictor = SamPredictor(tiny_sam(str(ckpt)))
    predictor.set_image(rgb)
    masks, scores, _ = predictor.predict(box=box, multimask_output=True)
    best = masks[int(np.argmax(scores))]
    assert masks.shape == (3, 128, 128)
    if best.sum() < max(1, cfg.min_area_fraction * best.size):
        with pytest.raises(InputError, match="empty mask"):
            extract_foreground(rgb, "sam", cfg)
    else:
        fg = extract_foreground(rgb, "sam", cfg)
        assert fg.method == "sam" and np.array_equal(fg.mask, best)


@pytest.fixture(autouse=True)
def fresh_model_caches():
    """Each test sees its own (stand-in or real) packages: empty the load-once caches around it."""
    fgm.sam_predictor.cache_clear()
    fgm.rembg_session.cache_clear()
    yield
    fgm.sam_predictor.cache_clear()
    fgm.rembg_session.cache_clear()


def test_sam_path_with_a_stub_package(tmp_path, monkeypatch):
    """The SAM branch, with a stand-in ``segment_anything`` module (STAND-IN: SAM weights are gigabytes and not
    here): box prompt, best mask, and the model loaded once for several images."""
    import sys
    import types

    rgb, truth = scene()
    seen = {}

    class Predictor:
        def __init__(self, sam):
            seen["sam"] = sam

        def set_image(self, image):
            seen["image"] = image.shape

        def predict(self, box, multimask_output):
            seen["box"] = box
            return np.stack([np.zeros_like(truth), truth]), np.array([0.1, 0.9]), None

    stub = types.ModuleType("segment_anything")
    stub.SamPredictor = Predictor
    loads = []
    stub.sam_model_registry = {"vit_b": lambda checkpoint: loads.append(checkpoint) or f"sam({checkpoint})"}
    monkeypatch.setitem(sys.modules, "segment_anything", stub)
    monkeypatch.setattr(fgm.importlib.util, "find_spec", lambda name: object())
    (tmp_path / "sam.pth").write_bytes(b"x")
    fg = extract_foreground(rgb, "sam", ForegroundConfig(sam_checkpoint=str(tmp_path / "sam.pth"),
                                                         sam_model_type="vit_b"))
    assert fg.method == "sam" and np.array_equal(fg.mask, truth)
    x0, y0, x1, y1 = seen["box"]
    assert x0 < 36 and y0 < 25 and x1 > 92 and y1 > 110   # box around the object plus margin
    cfg = ForegroundConfig(sam_checkpoint=str(tmp_path / "sam.pth"), sam_model_type="vit_b")
    for _ in range(3):
        extract_foreground(rgb, "sam", cfg)
    assert loads == [str((tmp_path / "sam.pth").resolve())]  # four images, one load


def _stand_in_rembg(monkeypatch, truth, loads):
    """A stand-in ``rembg`` module (STAND-IN: rembg's ONNX model is downloaded on first use, impossible offline)."""
    import sys
    import types

    stub = types.ModuleType("rembg")
    stub.sessions = types.SimpleNamespace(sessions={})  # unknown model layout: the file check is skipped
    stub.new_session = lambda name: loads.append(name) or f"session({name})"
    stub.remove = lambda rgb, session: np.dstack([rgb, truth.astype(np.uint8) * 255])
    monkeypatch.setitem(sys.modules, "rembg", stub)
    monkeypatch.setattr(fgm, "rembg_available", lambda: True)


def test_rembg_session_is_created_once_per_process(monkeypatch):
    rgb, truth = scene()
    loads = []
    _stand_in_rembg(monkeypatch, truth, loads)
    for _ in range(3):
        fg = extract_foreground(rgb, "rembg")
        assert fg.method == "rembg" and np.array_equal(fg.mask, truth)
    assert loads == ["u2net"]


def test_auto_prefers_a_working_rembg(monkeypatch):
    rgb, truth = scene()
    _stand_in_rembg(monkeypatch, truth, [])
    assert extract_foreground(rgb, "auto").method == "rembg"


def test_real_rembg_without_its_model_file_fails_fast_without_downloading(tmp_path, monkeypatch):
    """The real package (extra [rembg]): with an empty model folder it must not try to download (which hangs
    offline); rembg=... is one line, auto falls back to OpenCV, and the failure is not cached."""
    pytest.importorskip("rembg", reason="optional package rembg not installed")
    for var in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "models"))
    rgb, _ = scene()
    with pytest.raises(InputError, match="not on disk"):
        extract_foreground(rgb, "rembg")
    assert fgm.rembg_session.cache_info().currsize == 0
    assert extract_foreground(rgb, "auto").method == "opencv"
