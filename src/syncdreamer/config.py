"""Config helpers shared by the entry points and library code."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_plain(value: Any) -> Any:
    """An OmegaConf node as plain resolved dicts/lists; anything else is returned unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def dataclass_from(cls: type, node: Any, error: type[Exception] = ValueError, tuples: bool = True) -> Any:
    """A config section (mapping, OmegaConf node, ``None`` or already a ``cls``) -> a ``cls`` dataclass.

    Unknown keys raise ``error`` with one line naming them and the valid keys; list values become tuples
    (``tuples``) so that the dataclass stays hashable and read-only in spirit.
    """
    if isinstance(node, cls):
        return node
    node = to_plain(node)
    if node is None:
        node = {}
    if not isinstance(node, Mapping):
        raise error(f"{cls.__name__} settings must be a mapping of keys, got {type(node).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(node) - names
    if unknown:
        raise error(f"unknown {cls.__name__} keys {sorted(unknown)}; valid keys: {sorted(names)}")
    return cls(**{k: tuple(v) if tuples and isinstance(v, list) else v for k, v in node.items()})
