"""Map-style datasets over the official render layout (see :mod:`syncdreamer.data.layout`).

Training items follow the official ``SyncDreamerTrainData``: per item a random input index ``s``; the 16
targets are read in rotated order ``(s, s+1, ..., s+N-1) mod N`` so target slot 0 has the input's azimuth;
the input image is ``input/<uid>/<s>.png`` and its elevation ``meta.pkl`` ``elevations[s]`` (radians).
Images are alpha-composited on white, resized (bicubic) to ``image_size``, in [-1, 1], channels first.
Not official: with ``mirror_prob`` an item is, with that probability, the object mirrored in the vertical plane
through the input camera (every image flipped left-right, targets in the order ``(s, s-1, ..., s-N+1) mod N``).

Item keys: ``target_image`` (N, 3, S, S), ``input_image`` (3, S, S), ``input_elevation`` () float32 radians,
``input_index`` () int64, ``uid`` str. The default collate turns them into (B, N, 3, S, S), (B, 3, S, S), (B,).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from . import layout

log = logging.getLogger(__name__)

__all__ = ["RenderedObjectsDataset", "ValidationImageFolder", "resolve_uids",
           "parse_validation_name", "DataError", "target_order", "draw_input_index", "draw_mirror", "check_mirror_prob",
           "object_item"]


class DataError(ValueError):
    """The data set cannot be used (missing folder, no valid object, bad uid list, bad validation images)."""


def target_order(s: int, view_num: int, mirror: bool = False) -> list[int]:
    """Target read order for input index ``s`` (the one home of the rotation): ``[(s + i) mod N]``, so target
    slot 0 has the input's azimuth (official ``SyncDreamerTrainData``).

    ``mirror``: the item shows the object mirrored in the vertical plane through the input camera. That mirror
    maps the camera at azimuth ``a_s + d`` to ``a_s - d`` and flips every image left-right, so target slot ``i``
    is view ``(s - i) mod N`` flipped: ``[(s - i) mod N]`` (the images are flipped by the caller)."""
    sign = -1 if mirror else 1
    return [(int(s) + sign * i) % view_num for i in range(view_num)]


def draw_input_index(view_num: int, fixed: int | None = None) -> int:
    """The input view of an item: ``fixed`` if given, else uniform over ``0..N-1`` (torch's RNG, so
    ``seed_everything(workers=True)`` makes it reproducible)."""
    return int(fixed) if fixed is not None else int(torch.randint(view_num, ()).item())


def draw_mirror(prob: float) -> bool:
    """Whether an item is the mirrored object (:func:`target_order`), with probability ``prob`` (torch's RNG).

    A valid augmentation only when the lighting is mirror-symmetric about every rig camera's vertical plane:
    our renders' uniform world light (and the CPU rasteriser's head light) are; a fixed directional sun is not."""
    return bool(prob > 0 and torch.rand(()).item() < prob)


def check_mirror_prob(prob) -> float:
    """``data.mirror_prob`` as a float in [0, 1] (else :class:`DataError`)."""
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
        raise DataError(f"data.mirror_prob={prob!r} must be a probability in [0, 1] (0 = no mirrored items)")
    return float(prob)


def object_item(uid: str, s: int, view_num: int, image_size: int, read_rgba, elevations,
                mirror: bool = False) -> dict:
    """One training item from a view reader ``read_rgba(rig, i) -> RGBA uint8`` and the input elevations
    (radians): ``target_image`` (N, 3, S, S) in :func:`target_order`, ``input_image`` (3, S, S),
    ``input_elevation``, ``input_index``, ``uid``; ``mirror``: the mirrored object (images flipped left-right,
    targets in mirrored order). Folders and shards both build items here."""
    if len(elevations) < view_num:
        raise DataError(f"{uid}: input meta has {len(elevations)} views, need {view_num}")
    targets = torch.stack([layout.rgba_to_tensor(read_rgba("target", i), image_size)
                           for i in target_order(s, view_num, mirror)])
    image = layout.rgba_to_tensor(read_rgba("input", s), image_size)
    if mirror:
        targets, image = targets.flip(-1), image.flip(-1)
    return {"target_image": targets, "input_image": image,
            "input_elevation": torch.tensor(float(elevations[s]), dtype=torch.float32),
            "input_index": torch.tensor(s, dtype=torch.long), "uid": uid}


def resolve_uids(root, uid_list=None, all_uids: Sequence[str] | None = None) -> list[str]:
    """The uids to use: ``uid_list`` (a path to a .pkl/.txt list, or a list) or else ``all_uids`` (the
    manifest's usable uids; None = every folder under ``root/target``)."""
    if uid_list is None:
        return list(all_uids) if all_uids is not None else layout.list_uids(root, "target")
    if isinstance(uid_list, (str, Path)):
        path = Path(uid_list)
        if not path.is_absolute() and not path.is_file():
            path = Path(root) / path
        if not path.is_file():
            raise DataError(f"uid list {str(uid_list)!r} not found (looked at {path}); write one with "
                            "data_prep/validate.py or leave it null to use every object under <root>/target")
        try:
            return layout.read_uid_list(path)
        except ValueError as exc:  # includes MetaError: an unsafe or corrupt .pkl list
            raise DataError(str(exc)) from None
    return [str(u) for u in uid_list]


class RenderedObjectsDataset(Dataset):
    """Objects of the official render layout -> training (or held-out validation) items.

    Args:
        root: data folder holding ``target/`` and ``input/``.
        uids: object ids (usable in the manifest, :mod:`syncdreamer.data.manifest`).
        view_num: N target views.
        image_size: output size S (images are resized bicubically when the renders differ).
        input_index: ``None`` = a random input view per item (training); an int = always that view
            (deterministic held-out validation).
        mirror_prob: probability that an item is the mirrored object (:func:`target_order`; 0 = official).
    """

    def __init__(self, root, uids: Sequence[str], view_num: int = 16, image_size: int = 256,
                 input_index: int | None = None, mirror_prob: float = 0.0):
        self.root, self.uids = Path(root), list(uids)
        self.view_num, self.image_size, self.input_index = int(view_num), int(image_size), input_index
        self.mirror_prob = check_mirror_prob(mirror_prob)
        if input_index is not None and not 0 <= input_index < view_num:
            raise DataError(f"input_index {input_index} outside 0..{view_num - 1}")

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, index: int) -> dict:
        uid = self.uids[index]
        s = draw_input_index(self.view_num, self.input_index)
        meta = layout.read_meta(layout.meta_path(self.root, "input", uid))
        return object_item(uid, s, self.view_num, self.image_size,
                           lambda rig, i: layout.read_view_rgba(layout.view_path(self.root, rig, uid, i)),
                           meta["elevations"], draw_mirror(self.mirror_prob))


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

