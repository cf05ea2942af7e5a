"""Reading checkpoint files safely, and loading a state dict into a model with one-line errors.

Files are read with ``torch.load(weights_only=True)`` or safetensors. Lightning checkpoints carry a few
harmless non-tensor objects (paths, hyper-parameter containers); those globals are replaced by inert
stand-ins that are never executed, so a checkpoint from the internet cannot run code here. Every problem
(missing file, not a checkpoint, missing / unexpected keys, shape mismatch) raises :class:`CheckpointError`
with a one-line message that names the keys.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "read_checkpoint", "check_and_load", "listing"]

_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a one-line reason."""


def listing(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _inert_stub(qualified_name: str) -> type:
    """A class standing in for a non-tensor global of a checkpoint: it records its arguments, runs nothing."""

    class _Stub:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

        def __setstate__(self, state):
            self.state = state

        def __call__(self, *args, **kwargs):  # functions pickled by reference
            return _Stub(*args, **kwargs)

    _Stub.__name__ = _Stub.__qualname__ = f"Stub[{qualified_name}]"
    return _Stub


_SAFE_BUILTINS = {t.__name__: t for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bool,
                                          bytearray, slice, range)}


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; unsupported globals become inert stubs (retried one at a time)."""
    stubs: list[tuple[type, str]] = []
    for _ in range(256):
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            if not match:
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                why = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else type(err).__name__)
                raise CheckpointError(f"{path}: refused, it is not a plain weights file ({why[:200]})") from None
            name = match.group(1)
            if any(n == name for _, n in stubs):
                raise CheckpointError(f"{path}: cannot be read safely (global {name} keeps failing)") from None
            if "." not in name:  # a builtin: harmless container types are allowed as themselves
                builtin = _SAFE_BUILTINS.get(name)
                if builtin is None:
                    raise CheckpointError(f"{path}: refused, it is not a plain weights file (builtin {name})")
                stubs.append((builtin, f"builtins.{name}"))
            else:
                stubs.append((_inert_stub(name), name))
        except Exception as err:  # zip, pickle and torch errors all mean "not a checkpoint"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first[:200]})") from None
    raise CheckpointError(f"{path}: too many non-tensor objects to read safely")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file -> ``(state_dict, extras)``.

    ``.safetensors`` -> (tensors, metadata); a Lightning checkpoint -> (``ckpt["state_dict"]``, the rest of
    the dict, e.g. ``config``, ``global_step``); a plain state dict -> (it, {}).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (check the path; official weights go under ckpt/)")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(err)[:200]})") from None
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        sd, extras = dict(obj["state_dict"]), {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, Mapping):
        sd, extras = dict(obj), {}
    else:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or Lightning checkpoint")
    if not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{path}: no tensors under 'state_dict' (not a model checkpoint)")
    return sd, extras


def check_and_load(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str, strict: bool = True,
                    allow_missing_prefixes: tuple[str, ...] = ()) -> dict:
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(allow_missing_prefixes)]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
        raise CheckpointError(f"{what} does not match the model config; " + "; ".join(parts))
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd
              if k in own and sd[k].shape != own[k].shape]
    if shapes:
        raise CheckpointError(f"{what} does not match the model config; {len(shapes)} shape mismatches: "
                              f"{listing(shapes)}")
    usable = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "missing": missing, "unexpected": unexpected}
