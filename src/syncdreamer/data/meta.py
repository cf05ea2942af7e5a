"""The one reader (and writer) of camera metadata and uid lists of a data set: never runs code from a file.

A downloaded data set is a file from the internet, so its ``meta.pkl`` and ``uid_set.pkl`` files are read
by :class:`RestrictedUnpickler`, which rebuilds only numpy arrays / dtypes / scalars and plain Python
values (numbers, strings, bytes, lists, tuples, dicts). Any other global (``posix.system``, ``builtins.eval``,
a class) and any truncated or corrupt file raise :class:`MetaError`, a one-line message naming the file.

Our own writers put a JSON twin beside every pickle (``meta.json`` next to ``meta.pkl``, ``.txt`` next to a
``.pkl`` uid list) and our readers prefer it, so our tools never need the pickle at all.

``meta.pkl`` is the official list ``[K (3,3), azimuths (N,), elevations (N,), distances (N,), poses (N,3,4)]``
(radians, scene units, world-to-camera OpenCV poses); :func:`read_meta` returns it as a dict of float64 arrays.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["MetaError", "RestrictedUnpickler", "safe_load_pickle", "read_meta", "write_meta", "meta_json_path",
           "read_uid_list", "write_uid_list", "META_KEYS"]

META_KEYS = ("K", "azimuths", "elevations", "distances", "poses")

# Globals a pickle of numpy arrays and plain values needs, and nothing else.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("_codecs", "encode"),  # protocol-2 pickles store bytes as latin-1 text
}


class MetaError(ValueError):
    """A metadata / uid-list file that cannot be read safely (the message names the file)."""


class _Refused(pickle.UnpicklingError):
    """A global or persistent id the restricted unpickler does not allow."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the numpy globals in ``_ALLOWED`` (plus numpy dtype classes)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module in ("numpy", "numpy.dtypes") and name.endswith("DType"):  # numpy >= 1.25 dtype classes
            return super().find_class(module, name)
        raise _Refused(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("refusing a persistent id")


def safe_load_pickle(path):
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; :class:`MetaError` for anything but data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise MetaError(f"{path}: not a plain data pickle ({exc}); it may be malicious, refusing to read it") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            UnicodeDecodeError, OverflowError) as exc:
        raise MetaError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
                        "download or render it again") from None


def meta_json_path(path) -> Path:
    """The JSON twin of a ``meta.pkl``: ``meta.json`` in the same folder."""
    return Path(path).with_suffix(".json")


def _meta_from_list(meta, path) -> dict:
    if isinstance(meta, dict) and set(META_KEYS) <= set(meta):  # our JSON twin
        meta = [meta[k] for k in META_KEYS]
    if not isinstance(meta, (list, tuple)) or len(meta) != 5:
        raise MetaError(f"{path}: expected the official list [K, azimuths, elevations, distances, poses]")
    try:
        out = {k: np.asarray(v, np.float64) for k, v in zip(META_KEYS, meta)}
    except (TypeError, ValueError) as exc:
        raise MetaError(f"{path}: non-numeric camera metadata ({exc})") from None
    n = len(out["poses"]) if out["poses"].ndim else 0
    if out["K"].shape != (3, 3) or out["poses"].shape != (n, 3, 4) or any(
        out[k].shape != (n,) for k in ("azimuths", "elevations", "distances")
    ):
        raise MetaError(f"{path}: inconsistent shapes {[out[k].shape for k in META_KEYS]}")
    return out


def read_meta(path) -> dict:
    """``meta.pkl`` (or its ``meta.json`` twin, preferred when present) -> dict of float64 arrays ``K`` (3,3),
    ``azimuths``, ``elevations``, ``distances`` (N,) in radians / scene units, ``poses`` (N,3,4)."""
    path = Path(path)
    twin = meta_json_path(path)
    if path.suffix == ".json" or (twin.is_file() and path.suffix == ".pkl"):
        src = path if path.suffix == ".json" else twin
        try:
            return _meta_from_list(json.loads(src.read_text()), src)
        except json.JSONDecodeError as exc:
            raise MetaError(f"{src}: truncated or corrupt JSON ({exc})") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: meta.pkl not found (render the object or check the path)")
    return _meta_from_list(safe_load_pickle(path), path)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_meta(path, meta) -> Path:
    """Write ``meta.pkl`` (the official list, float32) and its ``meta.json`` twin atomically, from a
    :class:`syncdreamer.cameras.Rig`, the official list or a dict."""
    if hasattr(meta, "to_meta"):
        meta = meta.to_meta()
    elif isinstance(meta, dict):
        meta = [meta[k] for k in META_KEYS]
    meta = [np.asarray(v, np.float32) for v in meta]
    path = Path(path)
    _atomic_write(meta_json_path(path), json.dumps({k: v.tolist() for k, v in zip(META_KEYS, meta)}).encode())
    _atomic_write(path, pickle.dumps(meta))
    return path


def write_uid_list(path, uids) -> Path:
    """Write uids to ``path``: ``.pkl`` = pickle list (official ``uid_set_pkl``), ``.txt`` = one per line."""
    path = Path(path)
    uids = [str(u) for u in uids]
    if path.suffix == ".pkl":
        _atomic_write(path, pickle.dumps(uids))
    elif path.suffix == ".txt":
        _atomic_write(path, "".join(u + "\n" for u in uids).encode())
    else:
        raise ValueError(f"{path}: uid lists are .pkl or .txt")
    return path


def read_uid_list(path) -> list[str]:
    """Read a uid list: ``.pkl`` (a pickled list, read safely; its ``.txt`` twin is preferred when present)
    or text (one uid per line, ``#`` comments and blank lines ignored)."""
    path = Path(path)
    if path.suffix == ".pkl" and path.with_suffix(".txt").is_file():
        path = path.with_suffix(".txt")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: uid list not found")
    if path.suffix == ".pkl":
        uids = safe_load_pickle(path)
        if not isinstance(uids, (list, tuple)) or not all(isinstance(u, (str, bytes, int)) for u in uids):
            raise MetaError(f"{path}: expected a pickled list of uid strings")
        return [u.decode() if isinstance(u, bytes) else str(u) for u in uids]
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]
