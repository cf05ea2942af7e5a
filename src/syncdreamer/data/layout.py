"""Read and write the rendered data set layout (the official SyncDreamer layout plus depth and provenance).

::

    <root>/target/<uid>/000.png ... 015.png        RGBA, fixed rig (elevation 30 deg, azimuth i*22.5 deg)
    <root>/target/<uid>/000_depth.png ...          16-bit depth per view (see read_depth)
    <root>/target/<uid>/meta.pkl                   [K, azimuths, elevations, distances, poses] of that rig
    <root>/target/<uid>/meta.json                  the same as JSON (our renders; read instead of the pickle)
    <root>/target/<uid>/render.json                how it was rendered (Blender, settings, normalisation)
    <root>/input/<uid>/...                         the same for the random-elevation input rig
    <root>/failures.jsonl                          objects that could not be rendered, with the reason
    <uid_list>.pkl / .txt                          pickle list of uids (official ``uid_set_pkl``) / one per line

``meta.pkl`` is the official pickle ``[K (3,3), azimuths (N,), elevations (N,), distances (N,),
poses (N,3,4)]``: angles in radians, poses world-to-camera OpenCV. Depth is camera z-depth in scene units,
stored as a 16-bit grey PNG with the official encoding ``depth = v / 65535 * (far - near) + near``
(``near = 0.6``, ``far = 2.4``; a normalised object seen from distance 1.5 lies within 0.634..2.366) and
``v = 0`` marking empty pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..imaging import composite_on_white
from .meta import META_KEYS, read_meta, read_uid_list, write_meta, write_uid_list  # re-exported

__all__ = [
    "RIGS",
    "DEPTH_NEAR",
    "DEPTH_FAR",
    "view_name",
    "depth_name",
    "view_path",
    "depth_path",
    "meta_path",
    "object_dir",
    "list_uids",
    "view_count",
    "rig_complete",
    "read_view_rgba",
    "rgba_to_tensor",
    "read_view_tensor",
    "read_meta",
    "write_meta",
    "encode_depth",
    "decode_depth",
    "read_depth",
    "write_depth",
    "write_uid_list",
    "read_uid_list",
    "read_jsonl",
]

#: The two rigs of an object: fixed targets and random-elevation inputs.
RIGS = ("target", "input")
#: Depth encoding range (scene units), the official values.
DEPTH_NEAR = 0.6
DEPTH_FAR = 2.4


def view_name(i: int) -> str:
    """File name of view ``i``: ``000.png``."""
    return f"{int(i):03d}.png"


def depth_name(i: int) -> str:
    """File name of the depth map of view ``i``: ``000_depth.png``."""
    return f"{int(i):03d}_depth.png"


def object_dir(root, rig: str, uid: str) -> Path:
    """``<root>/<rig>/<uid>``."""
    if rig not in RIGS:
        raise ValueError(f"rig must be one of {RIGS}, got {rig!r}")
    return Path(root) / rig / uid


def view_path(root, rig: str, uid: str, i: int) -> Path:
    """Path of view ``i`` of ``uid`` in ``rig``."""
    return object_dir(root, rig, uid) / view_name(i)


def depth_path(root, rig: str, uid: str, i: int) -> Path:
    """Path of the depth map of view ``i``."""
    return object_dir(root, rig, uid) / depth_name(i)


def meta_path(root, rig: str, uid: str) -> Path:
    """Path of the rig's ``meta.pkl``."""
    return object_dir(root, rig, uid) / "meta.pkl"


def list_uids(root, rig: str = "target") -> list[str]:
    """Sorted uids (sub-folder names, hidden ones excluded) under ``<root>/<rig>``; [] if it does not exist."""
    d = Path(root) / rig
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def view_count(folder) -> int:
    """Number of view images ``NNN.png`` in a folder (depth maps and other files not counted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if len(p.name) == 7 and p.name.endswith(".png") and p.stem.isdigit())


def rig_complete(folder, n_views: int, depth: bool = True) -> bool:
    """True when the folder holds views ``0..n_views-1``, their depth maps (if ``depth``) and ``meta.pkl``."""
    folder = Path(folder)
    if not (folder / "meta.pkl").is_file():
        return False
    for i in range(n_views):
        if not (folder / view_name(i)).is_file():
            return False
        if depth and not (folder / depth_name(i)).is_file():
            return False
    return True


# ----------------------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------------------
def read_view_rgba(path) -> np.ndarray:
    """A view as RGBA uint8 (H, W, 4); images without alpha get alpha 255."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: view image not found")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA")).copy()


def rgba_to_tensor(rgba: np.ndarray, image_size: int | None = None):
    """RGBA uint8 (H, W, 4) -> float tensor (3, S, S) in [-1, 1], alpha-composited on white.

    With ``image_size`` the composited image is resized (bicubic, as the official loader) to that size.
    """
    import torch

    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[-1] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected an RGBA uint8 array (H, W, 4), got {rgba.dtype} {rgba.shape}")
    rgb = composite_on_white(rgba.astype(np.float32) / 255.0)
    if image_size is not None and rgb.shape[:2] != (image_size, image_size):
        from PIL import Image

        img = Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8))
        rgb = np.asarray(img.resize((image_size, image_size), Image.BICUBIC), np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)) * 2.0 - 1.0)


def read_view_tensor(path, image_size: int | None = None):
    """A view as a float tensor (3, H, W) in [-1, 1] composited on white (see :func:`rgba_to_tensor`)."""
    return rgba_to_tensor(read_view_rgba(path), image_size)


# ----------------------------------------------------------------------------------------------------------
# depth
# ----------------------------------------------------------------------------------------------------------
def encode_depth(depth, near: float = DEPTH_NEAR, far: float = DEPTH_FAR) -> np.ndarray:
    """Depth (H, W) float, 0 / inf / nan where empty -> uint16 with 0 = empty (the renderer's encoding)."""
    d = np.asarray(depth, np.float64)
    valid = np.isfinite(d) & (d > 0)
    v = np.clip(np.rint((np.where(valid, d, near) - near) / (far - near) * 65535.0), 1, 65535)
    return np.where(valid, v, 0).astype(np.uint16)


def decode_depth(v, near: float = DEPTH_NEAR, far: float = DEPTH_FAR) -> np.ndarray:
    """uint16 -> float32 depth, ``v / 65535 * (far - near) + near``, 0 where ``v == 0`` (empty)."""
    v = np.asarray(v)
    d = v.astype(np.float64) / 65535.0 * (far - near) + near
    return np.where(v == 0, 0.0, d).astype(np.float32)


def read_depth(path, near: float = DEPTH_NEAR, far: float = DEPTH_FAR) -> np.ndarray:
    """A depth map as float32 (H, W) camera z-depth in scene units, **0 where empty**.

    Reads the renderer's 16-bit PNG (``NNN_depth.png``) or a float ``.npy`` (non-finite / <= 0 -> 0).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: depth map not found")
    if path.suffix == ".npy":
        d = np.load(path).astype(np.float32)
        return np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.dtype != np.uint16 and not (arr.dtype == np.int32 and arr.max(initial=0) <= 65535):
        raise ValueError(f"{path}: expected a 16-bit grey PNG depth map, got {arr.dtype} {arr.shape}")
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel depth map, got shape {arr.shape}")
    return decode_depth(arr.astype(np.uint16), near, far)


def write_depth(path, depth, near: float = DEPTH_NEAR, far: float = DEPTH_FAR) -> Path:
    """Write float depth (0 / inf / nan = empty) as the 16-bit PNG :func:`read_depth` reads (or ``.npy``)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, np.asarray(depth, np.float32))
        return path
    Image.fromarray(encode_depth(depth, near, far)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# logs
# ----------------------------------------------------------------------------------------------------------
def read_jsonl(path) -> list[dict]:
    """Records of a JSON-lines file ([] if missing); a truncated last line (crash) is ignored."""
    import json

    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
