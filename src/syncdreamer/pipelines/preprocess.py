"""Input images -> the conditioning picture SyncDreamer expects (the official ``prepare_inputs`` behaviour).

Behaviour (spec section 4.2), on an RGBA picture whose alpha is the object mask:

* ``crop_size > 0``: crop to the bounding box of the non-zero alpha (as the official code: the box's right
  and bottom edges are exclusive, i.e. PIL ``crop((min_x, min_y, max_x, max_y))``), resize so that the longer
  side is ``int(crop_size / max(h, w) * side)`` (bicubic, PIL premultiplies alpha), paste centred on a
  transparent ``image_size`` square canvas (offset ``(size - w) // 2``).
* ``crop_size == -1``: pad the whole picture to a centred transparent square, resize it to ``image_size``.
* Composite on white with the alpha, map to [-1, 1], channels first: ``(3, image_size, image_size)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.layout import rgba_to_tensor
from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file -> uint8 array (H, W, 3) RGB or (H, W, 4) RGBA (palette / grey images converted).

    Raises :class:`InputError` (one line) when the file is missing or is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            im = im.convert("RGBA" if has_alpha else "RGB")
            arr = np.asarray(im).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"not a readable image: {path} ({type(err).__name__})") from None
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"image too small ({arr.shape[1]}x{arr.shape[0]}): {path}")
    return arr


def alpha_bbox(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(min_x, min_y, max_x, max_y) of the non-zero pixels of ``alpha`` (H, W); raises InputError if empty."""
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        raise InputError("empty mask: no foreground pixel in the alpha channel")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _paste_centered(im: Image.Image, size: int) -> Image.Image:
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def crop_and_center(rgba: np.ndarray, crop_size: int = -1, image_size: int = 256) -> np.ndarray:
    """RGBA uint8 (H, W, 4) -> RGBA uint8 (image_size, image_size, 4) framed as the official code does.

    ``crop_size`` is -1 (pad to square and resize) or in [1, image_size] (object's longer side in pixels).
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise InputError(f"expected an RGBA image (H, W, 4), got shape {tuple(rgba.shape)}")
    if crop_size != -1 and not 1 <= crop_size <= image_size:
        raise InputError(f"crop_size must be -1 or in [1, {image_size}], got {crop_size}")
    im = Image.fromarray(rgba, "RGBA")
    if crop_size != -1:
        x0, y0, x1, y1 = alpha_bbox(rgba[..., 3])
        im = im.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))  # official: right/bottom exclusive
        scale = crop_size / max(im.width, im.height)
        w, h = max(1, int(scale * im.width)), max(1, int(scale * im.height))
        im = _paste_centered(im.resize((w, h), resample=Image.BICUBIC), image_size)
    else:
        alpha_bbox(rgba[..., 3])  # reject an empty mask here too
        im = _paste_centered(im, max(im.width, im.height)).resize((image_size, image_size), resample=Image.BICUBIC)
    return np.asarray(im).copy()


def composite_on_white(rgba: np.ndarray) -> torch.Tensor:
    """RGBA uint8 (H, W, 4) -> float tensor (3, H, W) in [-1, 1], composited on white (the data loaders' own
    conversion, :func:`syncdreamer.data.layout.rgba_to_tensor`, so a generated input matches a training one)."""
    return rgba_to_tensor(rgba)


def prepare_input(rgba: np.ndarray, crop_size: int = -1, image_size: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """RGBA uint8 (H, W, 4) -> (image (3, S, S) in [-1, 1] on white, framed RGBA uint8 (S, S, 4))."""
    framed = crop_and_center(rgba, crop_size, image_size)
    return composite_on_white(framed), framed


def list_inputs(spec) -> list[Path]:
    """``input`` config value (a file, a folder, or a list / comma-separated string of them) -> image paths.

    A folder contributes its files with an image suffix, sorted by name; an explicitly named file is kept
    whatever its suffix (so that a non-image file is reported by :func:`load_image`).
    """
    if spec is None:
        return []
    items = list(spec) if isinstance(spec, (list, tuple)) or hasattr(spec, "__iter__") and not isinstance(spec, str) \
        else [s for s in str(spec).split(",") if s.strip()]
    paths: list[Path] = []
    for item in items:
        p = Path(str(item).strip()).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            raise InputError(f"input not found: {p}")
    return paths
