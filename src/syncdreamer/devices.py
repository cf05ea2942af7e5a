"""The one device picker of the project (generation, reconstruction, evaluation, benchmarks).

``pick_device("auto")`` is cuda when a GPU is visible, else cpu; an explicit name is checked so that
``device=cuda`` on a machine without a GPU is one clear :class:`DeviceError` (a ``ValueError``: entry
points print it on one line and exit with code 2) instead of a traceback deep inside torch.
"""
from __future__ import annotations

import torch

__all__ = ["DeviceError", "pick_device"]


class DeviceError(ValueError):
    """An unknown or unavailable device (the message says what to use instead)."""


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; otherwise the named device, checked to exist."""
    if isinstance(name, torch.device):
        dev = name
    elif name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(name))
        except RuntimeError:
            raise DeviceError(f"unknown device {name!r} (use auto | cpu | cuda | cuda:<i>)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device={name} but no CUDA GPU is available (use device=cpu or device=auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device={name} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device={name} but MPS is not available (use device=cpu or device=auto)")
    return dev
