"""The one image convention every part shares: RGBA with alpha in [0, 1], composited on a white background.

Images on disk are RGBA PNGs; in tensors they are float in [-1, 1], composited on white, channels first
(``DESIGN.md``). Metrics, reconstruction, the data loaders and the generation front end all composite through
:func:`composite_on_white`.
"""
from __future__ import annotations

__all__ = ["composite_on_white"]


def composite_on_white(rgba):
    """RGBA (..., 4) in [0, 1], channels last (numpy or torch) -> RGB (..., 3) composited on white.

    RGB input (..., 3) is returned as is; any other channel count is a ``ValueError``."""
    if rgba.shape[-1] == 3:
        return rgba
    if rgba.shape[-1] != 4:
        raise ValueError(f"composite_on_white: expected 3 or 4 channels last, got shape {tuple(rgba.shape)}")
    a = rgba[..., 3:]
    return rgba[..., :3] * a + (1 - a)
