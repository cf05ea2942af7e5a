"""Locating and reading the golden fixtures produced by the official code (see ../shared/golden/README.md).

The root is ``$SYNCDREAMER_GOLDEN_DIR`` when set, else ``../shared/golden`` beside the repository. Every
folder below the root that holds a ``manifest.json`` is a fixture, dispatched on its ``kind``. When ``CI``
is set and no fixture of a kind is found the tests fail instead of skipping.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def shared_root() -> Path:
    """The project's shared folder (golden tensors, the reference tables): ``../shared`` beside the checkout; a
    local clone of the work tree (e.g. a fresh clone in a temporary folder) looks beside the repository it was
    cloned from."""
    here = REPO.parent / "shared"
    if here.is_dir():
        return here
    import subprocess

    origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir():
        beside = Path(origin).resolve().parent / "shared"
        if beside.is_dir():
            return beside
    return here


def golden_root() -> Path:
    """``$SYNCDREAMER_GOLDEN_DIR``, else ``<shared>/golden`` (:func:`shared_root`)."""
    env = os.environ.get("SYNCDREAMER_GOLDEN_DIR")
    return Path(env) if env else shared_root() / "golden"


def reference_table() -> Path:
    """The official checkpoint's key / shape table, ``<shared>/reference/syncdreamer_state_dict_keys.tsv``."""
    return shared_root() / "reference" / "syncdreamer_state_dict_keys.tsv"


def missing_fixture(reason: str):
    """A test input that should be on disk is not: skip here, but fail under CI (env ``CI`` set), where
    every fixture must be present (see the CI skip rule in tests/conftest.py)."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} and CI is set: CI must provide it")
    pytest.skip(reason)


def fixtures_of_kind(kind: str) -> list[Path]:
    root = golden_root()
    if not root.is_dir():
        return []
    out = []
    for manifest in sorted(root.rglob("manifest.json")):
        try:
            if json.loads(manifest.read_text()).get("kind") == kind:
                out.append(manifest.parent)
        except (OSError, json.JSONDecodeError):
            continue
    return out


def fixture_params(kind: str):
    """pytest params: one per fixture folder of ``kind``; a skip (or, under CI, a failure) when none."""
    dirs = fixtures_of_kind(kind)
    if dirs:
        return [pytest.param(d, id=d.name) for d in dirs]
    # Golden(None) skips, or fails when CI is set.
    return [pytest.param(None, id=f"missing-{kind}")]


class Golden:
    """One fixture folder: ``manifest``, ``config``, ``weights`` (float32) and ``tensors`` (float32 / int64)."""

    def __init__(self, path: Path):
        if path is None:
            if os.environ.get("CI"):
                pytest.fail(f"golden fixtures missing under {golden_root()} and CI is set")
            pytest.skip("golden fixtures missing")
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.config = self.manifest["config"]
        self.weights = {k: (v.float() if v.is_floating_point() else v)
                        for k, v in load_file(self.path / self.manifest["weights"]["file"]).items()}
        files = {spec["file"] for spec in self.manifest["tensors"].values()}
        raw = {}
        for f in files:
            raw.update(load_file(self.path / f))
        self.tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in raw.items()}

    def outputs(self) -> list[str]:
        return [k for k, s in self.manifest["tensors"].items() if s["role"] == "output"]

    def tol(self, group: str) -> dict:
        return self.manifest["tolerance_hint"]["suggested"][group]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = ""):
    actual = actual.detach().to(expected.dtype).reshape(expected.shape)
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{name}: max abs diff {diff:.3e} (atol {atol}, rtol {rtol})\n{m}")


def denoiser_kwargs(config: dict) -> dict:
    """``SyncDreamer`` keyword arguments for a denoiser fixture, every structural number read from its config."""
    u, sv, fv = config["unet"], config["spatial_volume"], config["frustum_volume"]
    heads = {b["heads"] for b in config["depth_attention"]["blocks"]}
    assert len(heads) == 1, "one depth-attention head count expected"
    after = [b["applied_after"] for b in config["depth_attention"]["blocks"] if b["applied_after"] != "middle_block"]
    return dict(
        view_num=config["view_num"],
        image_size=config["image_size"],
        volume_resolution=sv["V"],
        frustum_depth=fv["D"],
        latent_channels=config["latent_channels"],
        viewpoint_dim=config["viewpoint_dim"],
        clip_dim=config["cc_projection"]["out"],
        time_embed_dim=sv["time_dim"],
        unet=dict(model_channels=u["model_channels"], channel_mult=list(u["channel_mult"]),
                  num_res_blocks=u["num_res_blocks"], attention_resolutions=list(u["attention_resolutions"]),
                  num_heads=u["num_heads"], transformer_depth=u["transformer_depth"],
                  depth_attention_heads=heads.pop(),
                  depth_attention_blocks=[int(a.split(".")[-1]) for a in after]),
        volume=dict(encoder_dim=sv["noisy_target_encoder"]["output_dim"], spatial_dims=list(sv["dims"]),
                    frustum_dims=list(fv["dims"]), volume_length=float(sv["extent"][1])),
    )
