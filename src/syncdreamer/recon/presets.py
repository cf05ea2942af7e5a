"""Reconstruction presets: the one source is ``conf/recon/<name>.yaml`` (Hydra group ``recon``).

* ``official`` -- NeuS as the official SyncDreamer code (8x256 MLPs, 64+64 samples, 4096 rays, 2000 steps).
* ``fast`` -- a hash-grid SDF with an occupancy grid, 400 steps at 128 px: minutes on a CPU.
* ``auto`` -- not a preset of its own: :func:`resolve_preset` picks ``official`` on a GPU and ``fast`` on a
  CPU and says which in one line. ``official`` on a CPU needs ``recon.allow_slow=true`` (otherwise a
  :class:`SlowPresetError` gives the estimated time).

The library reads the presets from the project's ``conf/recon`` folder (:func:`load_preset`); a preset
passed by Hydra is already complete and is used as is (checked by :func:`check_config`).
"""
from __future__ import annotations

import copy
from pathlib import Path

__all__ = ["PRESET_DIR", "SECTIONS", "SlowPresetError", "load_preset", "check_config", "merge_config",
           "resolve_preset"]

#: ``conf/recon`` of the project (the single source of the NeuS settings).
PRESET_DIR = Path(__file__).resolve().parents[3] / "conf" / "recon"
#: Sections every complete recon config has (``occupancy`` may be null).
SECTIONS = ("sdf", "color", "variance_init", "renderer", "occupancy", "train", "mesh", "turntable")
_META_KEYS = ("name", "allow_slow")


class SlowPresetError(ValueError):
    """The requested preset would take hours on this device (message: one line with the estimate)."""


def load_preset(name: str) -> dict:
    """The preset ``conf/recon/<name>.yaml`` as a plain dict (``auto`` is resolved by :func:`resolve_preset`)."""
    from omegaconf import OmegaConf

    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
        raise ValueError(f"unknown recon preset {name!r} (no {path}); known: {known}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def check_config(cfg: dict) -> dict:
    """``cfg`` unchanged when it has every section of :data:`SECTIONS`, else ``ValueError`` (one line)."""
    missing = [s for s in SECTIONS if s not in cfg]
    if missing:
        raise ValueError(f"recon config lacks {missing}: start from a complete preset "
                         "(syncdreamer.recon.presets.load_preset('official'|'fast') or conf/recon/*.yaml)")
    return cfg


def merge_config(base: dict, override: dict | None) -> dict:
    """Recursive dict merge (override wins).

    A sub-mapping with a ``kind`` key that differs from the base's replaces it whole (the arguments of
    another SDF field kind are not merged into the MLP's)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v.get("kind", out[k].get("kind")) == out[k].get("kind"):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_preset(recon_cfg: dict, device, estimate_fn=None, log=print) -> dict:
    """The complete preset to run on ``device`` (a ``torch.device``).

    ``name: auto`` -> ``official`` on cuda, ``fast`` elsewhere (one log line says which); keys given next to
    ``name: auto`` override the chosen preset. ``official`` (chosen or explicit) on a CPU without
    ``allow_slow: true`` raises :class:`SlowPresetError`; ``estimate_fn(cfg, device) -> seconds`` gives the
    estimate in its message."""
    cfg = dict(recon_cfg)
    name = cfg.get("name", "official")
    allow_slow = bool(cfg.get("allow_slow", False))
    if name == "auto":
        name = "official" if device.type == "cuda" else "fast"
        extra = {k: v for k, v in cfg.items() if k not in _META_KEYS}
        cfg = merge_config(load_preset(name), extra)
        if log is not None:
            log(f"recon=auto: using the {name} NeuS preset on {device} "
                f"({'GPU' if device.type == 'cuda' else 'no GPU'}; recon=official|fast to choose)")
    check_config(cfg)
    if cfg.get("sdf", {}).get("kind") == "mlp" and device.type == "cpu" and not allow_slow:
        est = estimate_fn(cfg, device) if estimate_fn is not None else None
        when = f"about {est / 3600:.1f} h" if est is not None else "hours"
        raise SlowPresetError(f"recon={name} on CPU takes {when} ({int(cfg['train']['steps'])} steps, estimated): "
                              "use recon=fast (or recon=auto), a GPU, or recon.allow_slow=true to run it anyway")
    cfg["name"] = name
    cfg["allow_slow"] = allow_slow
    return cfg
