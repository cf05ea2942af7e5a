"""Latent cache: VAE-encode every view once so training can sample latents without running the VAE.

For each object ``<cache_dir>/<uid>.safetensors`` holds (N views, latent h = S / 8):

* ``target_mean``, ``target_std`` (N, 4, h, w): posterior mean and std of the target views, **scaled** by
  the VAE scale factor, so a posterior sample is ``mean + std * randn`` (= ``encode_first_stage``);
* ``input_mean``, ``input_std`` (N, 4, h, w): the same for the N input views;
* ``input_clip`` (N, 1, C): the raw CLIP embedding of every input view (CLIP is deterministic);
* ``input_elevations`` (N,): radians, from the input rig's ``meta.pkl``;
* with ``mirror`` (``data.mirror_prob`` > 0): ``target_mean_mirror``, ``target_std_mirror``, ``input_mean_mirror``,
  ``input_std_mirror``, ``input_clip_mirror``: the same of every view flipped left-right. The flipped images are
  encoded, not the latents flipped: the VAE and CLIP are not flip-equivariant.

``<cache_dir>/cache_meta.json`` records image size, views, scale factor, ``mirror`` and a fingerprint of the VAE
and CLIP weights; a cache made with other weights, sizes or mirror setting is rejected (rebuild it, or point
elsewhere).
Items of :class:`LatentCacheDataset` apply the same random input index / target rotation as the image
dataset and carry ``target_latent_mean/std`` (N, 4, h, w), ``input_latent_mean/std`` (4, h, w),
``clip_embed`` (1, C) and ``input_elevation``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from . import layout
from .dataset import DataError, check_mirror_prob, draw_input_index, draw_mirror, target_order

log = logging.getLogger(__name__)

__all__ = ["encoder_fingerprint", "cache_key", "build_latent_cache", "check_latent_cache", "LatentCacheDataset", "CACHE_META",
           "cached_uids", "cached_mirror", "latent_item"]

CACHE_META = "cache_meta.json"
_KEYS = ("target_mean", "target_std", "input_mean", "input_std", "input_clip", "input_elevations")


def encoder_fingerprint(model) -> str:
    """sha1 over the VAE and CLIP weights of a :class:`~syncdreamer.models.SyncDreamer` (cache validity)."""
    h = hashlib.sha1()
    for name in ("first_stage_model", "clip_image_encoder"):
        module = getattr(model, name, None)
        if module is None:
            raise DataError(f"the latent cache needs the model's {name} (model.vae / model.clip config)")
        for key, value in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(model, image_size: int, view_num: int, mirror: bool = False) -> str:
    """Short key of (encoder weights, image size, views, mirrored views): the cache sub-folder the data module
    uses, so caches of different weights, sizes or contents never mix."""
    h = hashlib.sha1(f"{encoder_fingerprint(model)}/{int(image_size)}/{int(view_num)}{'/mirror' * bool(mirror)}".encode())
    return h.hexdigest()[:12]


def _meta(model, image_size: int, view_num: int, mirror: bool = False) -> dict:
    meta = {"image_size": int(image_size), "view_num": int(view_num), "scale_factor": float(model.scale_factor),
            "fingerprint": encoder_fingerprint(model), "format": 1}
    if mirror:  # absent (not false) without: caches written before the key existed stay valid
        meta["mirror"] = True
    return meta


def check_latent_cache(cache_dir, expected: dict) -> None:
    """Raise :class:`DataError` when ``cache_dir`` was built for other sizes or other encoder weights."""
    path = Path(cache_dir) / CACHE_META
    if not path.is_file():
        return
    have = json.loads(path.read_text())
    diff = {k: (have.get(k), v) for k, v in expected.items() if have.get(k) != v}
    if diff:
        raise DataError(f"latent cache {cache_dir} does not match this run ({', '.join(f'{k}: cache {a} vs run {b}' for k, (a, b) in diff.items())}); "
                        "delete it or set data.latent_cache to another folder")


@torch.no_grad()
def _encode_object(model, root: Path, uid: str, view_num: int, image_size: int, device, mirror: bool = False) -> dict:
    vae = model.first_stage_model
    sf = float(model.scale_factor)
    out = {}
    for rig in ("target", "input"):
        imgs = torch.stack([layout.read_view_tensor(layout.view_path(root, rig, uid, i), image_size)
                            for i in range(view_num)]).to(device)
        for suffix, batch in (("", imgs), ("_mirror", imgs.flip(-1))) if mirror else (("", imgs),):
            mean, _, std = vae.posterior(batch)
            out[f"{rig}_mean{suffix}"], out[f"{rig}_std{suffix}"] = (mean * sf).float().cpu(), (std * sf).float().cpu()
            if rig == "input":
                out[f"input_clip{suffix}"] = model.encode_clip(batch).float().cpu()
    meta = layout.read_meta(layout.meta_path(root, "input", uid))
    out["input_elevations"] = torch.as_tensor(meta["elevations"][:view_num], dtype=torch.float32)
    return {k: v.contiguous() for k, v in out.items()}


def build_latent_cache(model, root, uids: Sequence[str], cache_dir, view_num: int = 16, image_size: int = 256,
                       device: str | torch.device | None = None, log_every: int = 100, mirror: bool = False) -> dict:
    """Encode every object not yet in ``cache_dir`` (resumable; files are written atomically); ``mirror``: also
    every view flipped left-right (for ``data.mirror_prob``; twice the encoding time and size).

    Returns ``{"encoded": n, "cached": m}``. Raises :class:`DataError` if the cache belongs to other weights.
    """
    root, cache_dir = Path(root), Path(cache_dir)
    expected = _meta(model, image_size, view_num, mirror)
    check_latent_cache(cache_dir, expected)
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / CACHE_META).write_text(json.dumps(expected, indent=1))
    if device is None:
        device = next(model.first_stage_model.parameters()).device
    have = cached_uids(cache_dir)
    todo = [u for u in uids if u not in have]
    was_training = model.training
    model.eval()
    for k, uid in enumerate(todo):
        tensors = _encode_object(model, root, uid, view_num, image_size, device, mirror)
        tmp = cache_dir / f".{uid}.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, cache_dir / f"{uid}.safetensors")
        if log_every and (k + 1) % log_every == 0:
            log.info("latent cache: %d / %d objects encoded", k + 1, len(todo))
    model.train(was_training)
    return {"encoded": len(todo), "cached": len(uids) - len(todo)}


def cached_mirror(cache_dir) -> bool | None:
    """Whether the cache at ``cache_dir`` holds the mirrored views (its ``cache_meta.json``); None without a meta."""
    meta = Path(cache_dir) / CACHE_META
    return bool(json.loads(meta.read_text()).get("mirror")) if meta.is_file() else None


def cached_uids(cache_dir) -> set[str]:
    """Uids with a finished cache file, from one directory listing (no per-object stat)."""
    try:
        with os.scandir(cache_dir) as it:
            return {e.name[: -len(".safetensors")] for e in it
                    if e.name.endswith(".safetensors") and not e.name.startswith(".")}
    except FileNotFoundError:
        return set()


def latent_item(uid: str, t: dict, s: int, view_num: int, mirror: bool = False) -> dict:
    """One training item from an object's cached tensors ``t`` (module docstring) for input index ``s``: targets
    in :func:`~syncdreamer.data.dataset.target_order`; ``mirror``: the mirrored object (the ``*_mirror``
    tensors). The latent cache and latent shards both build items here."""
    m = "_mirror" if mirror else ""
    if mirror and "target_mean_mirror" not in t:
        raise DataError(f"{uid}: the latent cache holds no mirrored views but data.mirror_prob > 0; rebuild it "
                        "with data.mirror_prob set (a new cache folder), then repack any latent shards")
    rot = target_order(s, view_num, mirror)
    return {"target_latent_mean": t[f"target_mean{m}"][rot], "target_latent_std": t[f"target_std{m}"][rot],
            "input_latent_mean": t[f"input_mean{m}"][s], "input_latent_std": t[f"input_std{m}"][s],
            "clip_embed": t[f"input_clip{m}"][s], "input_elevation": t["input_elevations"][s].clone(),
            "input_index": torch.tensor(s, dtype=torch.long), "uid": uid}


class LatentCacheDataset(Dataset):
    """Training items from the latent cache (random input index, rotated targets, optionally mirrored objects
    with probability ``mirror_prob``; see module docstring)."""

    def __init__(self, cache_dir, uids: Sequence[str], view_num: int = 16, input_index: int | None = None,
                 mirror_prob: float = 0.0):
        self.cache_dir, self.uids, self.view_num, self.input_index = Path(cache_dir), list(uids), view_num, input_index
        self.mirror_prob = check_mirror_prob(mirror_prob)
        have = cached_uids(self.cache_dir)
        missing = [u for u in self.uids if u not in have]
        if missing:
            raise DataError(f"latent cache {cache_dir} misses {len(missing)} object(s) (e.g. {missing[:3]}); "
                            "it is built by the data module's prepare_data (data.build_latent_cache=true)")
        if self.mirror_prob > 0 and cached_mirror(self.cache_dir) is False:
            raise DataError(f"latent cache {cache_dir} holds no mirrored views but data.mirror_prob="
                            f"{self.mirror_prob}; build one with the data module (another folder) or set mirror_prob=0")

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, index: int) -> dict:
        uid = self.uids[index]
        t = load_file(str(self.cache_dir / f"{uid}.safetensors"))
        s = draw_input_index(self.view_num, self.input_index)
        return latent_item(uid, t, s, self.view_num, draw_mirror(self.mirror_prob))
