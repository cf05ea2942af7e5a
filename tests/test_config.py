"""Model configs: the official numbers, the tiny numbers of the golden manifests, key layout of the full model."""
import ast
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from golden_utils import REPO, denoiser_kwargs, fixtures_of_kind, golden_root, missing_fixture, reference_table
from syncdreamer.checkpoints import build_model, official_to_model_keys

CONF = REPO / "conf"
KEYS_TSV = reference_table()


def model_cfg(name: str) -> dict:
    with initialize_config_dir(str(CONF / "model"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=name), resolve=True)


def _subset(expected: dict, actual: dict, path=""):
    for k, v in expected.items():
        assert k in actual, f"{path}{k} missing from config"
        if isinstance(v, dict):
            _subset(v, actual[k], f"{path}{k}.")
        else:
            assert actual[k] == v, f"{path}{k}: config {actual[k]!r} != manifest {v!r}"


def test_official_config_numbers():
    cfg = model_cfg("syncdreamer")
    assert (cfg["view_num"], cfg["image_size"], cfg["volume_resolution"], cfg["frustum_depth"]) == (16, 256, 32, 48)
    assert cfg["unet"]["model_channels"] == 320 and cfg["unet"]["num_heads"] == 8
    assert cfg["volume"]["spatial_dims"] == [64, 128, 256, 512] and cfg["vae"]["ch"] == 128
    assert cfg["clip"]["width"] == 1024 and cfg["clip"]["layers"] == 24


def test_tiny_config_equals_golden_manifests():
    cfg = model_cfg("syncdreamer_tiny")
    dens = fixtures_of_kind("denoiser")
    if not dens:
        missing_fixture(f"no golden fixtures under {golden_root()}")
    manifest = json.loads((dens[0] / "manifest.json").read_text())["config"]
    _subset(denoiser_kwargs(manifest), cfg)
    for kind, check in (("vae", lambda c: {"ch": c["ddconfig"]["ch"], "ch_mult": c["ddconfig"]["ch_mult"],
                                           "num_res_blocks": c["ddconfig"]["num_res_blocks"],
                                           "z_channels": c["ddconfig"]["z_channels"], "embed_dim": c["embed_dim"]}),
                        ("clip", lambda c: {"width": c["vision"]["width"], "layers": c["vision"]["layers"],
                                            "heads": c["vision"]["heads"], "patch_size": c["vision"]["patch_size"],
                                            "image_size": c["vision"]["input_resolution"],
                                            "output_dim": c["vision"]["output_dim"],
                                            "vocab_size": c["clip_constructor"]["vocab_size"],
                                            "transformer_width": c["clip_constructor"]["transformer_width"],
                                            "context_length": c["clip_constructor"]["context_length"]})):
        for fx in fixtures_of_kind(kind):
            _subset(check(json.loads((fx / "manifest.json").read_text())["config"]), cfg[kind])


def _official_table():
    rows = {}
    for line in KEYS_TSV.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        rows[key] = tuple(ast.literal_eval(shape))
    return rows


def test_full_size_model_maps_one_to_one_onto_official_keys():
    if not KEYS_TSV.is_file():
        missing_fixture(f"reference key table missing: {KEYS_TSV}")
    table = _official_table()
    assert len(table) == 1618
    with torch.device("meta"):
        model = build_model(model_cfg("syncdreamer"))
        official = {k: torch.empty(s) for k, s in table.items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {k: tuple(v.shape) for k, v in official_to_model_keys(official).items()}
    assert len(mapped) == len(table), "the key mapping merged or dropped official keys"
    assert set(ours) == set(mapped), (sorted(set(ours) - set(mapped))[:5], sorted(set(mapped) - set(ours))[:5])
    bad = {k: (ours[k], mapped[k]) for k in ours if ours[k] != mapped[k]}
    assert not bad, list(bad.items())[:5]
    n_params = sum(v.numel() for v in model.state_dict().values())
    assert n_params == sum(torch.Size(s).numel() for s in table.values())
    groups = model.trainable_parameter_groups()
    trainable = sum(p.numel() for g in groups.values() for p in g)
    assert abs(trainable / 1e6 - 106.0) < 0.5  # spec 3.2: ~106.0 M optimised parameters
