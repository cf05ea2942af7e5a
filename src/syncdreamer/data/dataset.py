"""Map-style datasets over the official render layout (see :mod:`syncdreamer.data.layout`).

Training items follow the official ``SyncDreamerTrainData``: per item a random input index ``s``; the 16
targets are read in rotated order ``(s, s+1, ..., s+N-1) mod N`` so target slot 0 has the input's azimuth;
the input image is ``input/<uid>/<s>.png`` and its elevation ``meta.pkl`` ``elevations[s]`` (radians).
Images are alpha-composited on white, resized (bicubic) to ``image_size``, in [-1, 1], channels first.

Item keys: ``target_image`` (N, 3, S, S), ``input_image`` (3, S, S), ``input_elevation`` () float32 radians,
``input_index`` () int64, ``uid`` str. The default collate turns them into (B, N, 3, S, S), (B, 3, S, S), (B,).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import layout

log = logging.getLogger(__name__)

__all__ = ["RenderedObjectsDataset", "ValidationImageFolder", "valid_objects", "resolve_uids",
           "parse_validation_name", "DataError"]


class DataError(ValueError):
    """The data set cannot be used (missing folder, no valid object, bad uid list, bad validation images)."""


def object_is_complete(root, uid: str, view_num: int) -> bool:
    """True when ``target/<uid>`` has views ``0..N-1`` and ``input/<uid>`` has views ``0..N-1`` and meta.pkl."""
    tdir, idir = layout.object_dir(root, "target", uid), layout.object_dir(root, "input", uid)
    if not (idir / "meta.pkl").is_file():
        return False
    return all((tdir / layout.view_name(i)).is_file() and (idir / layout.view_name(i)).is_file()
               for i in range(view_num))


def resolve_uids(root, uid_list=None) -> list[str]:
    """The uids to use: ``uid_list`` (a path to a .pkl/.txt list, or a list) or every folder under ``root/target``."""
    if uid_list is None:
        return layout.list_uids(root, "target")
    if isinstance(uid_list, (str, Path)):
        path = Path(uid_list)
        if not path.is_absolute() and not path.is_file():
            path = Path(root) / path
        if not path.is_file():
            raise DataError(f"uid list {str(uid_list)!r} not found (looked at {path}); write one with "
                            "data_prep/validate.py or leave it null to use every object under <root>/target")
        return layout.read_uid_list(path)
    return [str(u) for u in uid_list]


def valid_objects(root, uids: Sequence[str], view_num: int, what: str = "training") -> list[str]:
    """Keep the uids whose target and input rigs are complete; raise :class:`DataError` when none is left."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what} data folder {str(root)!r} does not exist; render objects into it with "
                        "`python data_prep/render.py input=<meshes> output_dir=<dir>` or set data.root")
    good = [u for u in uids if object_is_complete(root, u, view_num)]
    if len(good) < len(uids):
        bad = [u for u in uids if u not in set(good)]
        log.warning("%d of %d %s objects under %s are incomplete and skipped (e.g. %s)", len(bad), len(uids),
                    what, root, bad[:3])
    if not good:
        raise DataError(f"no valid {what} object under {root}: need target/<uid>/000..{view_num - 1:03d}.png and "
                        f"input/<uid>/000..{view_num - 1:03d}.png + meta.pkl ({len(uids)} uid(s) listed)")
    return good


class RenderedObjectsDataset(Dataset):
    """Objects of the official render layout -> training (or held-out validation) items.

    Args:
        root: data folder holding ``target/`` and ``input/``.
        uids: object ids (already validated with :func:`valid_objects`).
        view_num: N target views.
        image_size: output size S (images are resized bicubically when the renders differ).
        input_index: ``None`` = a random input view per item (training); an int = always that view
            (deterministic held-out validation).
    """

    def __init__(self, root, uids: Sequence[str], view_num: int = 16, image_size: int = 256,
                 input_index: int | None = None):
        self.root, self.uids = Path(root), list(uids)
        self.view_num, self.image_size, self.input_index = int(view_num), int(image_size), input_index
        if input_index is not None and not 0 <= input_index < view_num:
            raise DataError(f"input_index {input_index} outside 0..{view_num - 1}")

    def __len__(self) -> int:
        return len(self.uids)

    def rotation(self, s: int) -> list[int]:
        """Target read order for input index ``s``: ``[(s + i) mod N for i in 0..N-1]``."""
        return [(s + i) % self.view_num for i in range(self.view_num)]

    def __getitem__(self, index: int) -> dict:
        uid = self.uids[index]
        s = self.input_index if self.input_index is not None else int(torch.randint(self.view_num, ()).item())
        targets = torch.stack([layout.read_view_tensor(layout.view_path(self.root, "target", uid, i),
                                                       self.image_size) for i in self.rotation(s)])
        inp = layout.read_view_tensor(layout.view_path(self.root, "input", uid, s), self.image_size)
        meta = layout.read_meta(layout.meta_path(self.root, "input", uid))
        if len(meta["elevations"]) < self.view_num:
            raise DataError(f"{uid}: input meta.pkl has {len(meta['elevations'])} views, need {self.view_num}")
        return {"target_image": targets, "input_image": inp,
                "input_elevation": torch.tensor(float(meta["elevations"][s]), dtype=torch.float32),
                "input_index": torch.tensor(s, dtype=torch.long), "uid": uid}


_NAME = re.compile(r"^(?P<name>.+?)-(?P<elev>[+-]?\d+(?:\.\d+)?)$")


def parse_validation_name(path) -> tuple[str, float]:
    """``<name>-<elevation in degrees>.png`` -> (name, elevation in degrees), e.g. ``aircraft-30.png``."""
    m = _NAME.match(Path(path).stem)
    if not m:
        raise DataError(f"{path}: validation images are named <name>-<elevation deg>.png (e.g. chair-30.png)")
    return m["name"], float(m["elev"])


class ValidationImageFolder(Dataset):
    """The official ``validation_set`` format: RGBA ``<name>-<elev deg>.png`` files -> input items.

    Items: ``input_image`` (3, S, S) on white in [-1, 1], ``input_elevation`` () radians, ``uid`` (the name).
    """

    def __init__(self, folder, image_size: int = 256, max_items: int | None = None):
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"validation folder {str(folder)!r} does not exist (set data.validation_dir)")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
        if max_items:
            self.files = self.files[:max_items]
        if not self.files:
            raise DataError(f"validation folder {folder} holds no .png image")
        self.items = [(p, *parse_validation_name(p)) for p in self.files]
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, name, elev = self.items[index]
        return {"input_image": layout.read_view_tensor(path, self.image_size),
                "input_elevation": torch.tensor(math.radians(elev), dtype=torch.float32), "uid": name}


def rotate_views(x: np.ndarray | torch.Tensor, s: int):
    """Views of ``x`` (N, ...) in the order ``s, s+1, ..., s+N-1 (mod N)``."""
    n = x.shape[0]
    idx = [(s + i) % n for i in range(n)]
    return x[idx]
