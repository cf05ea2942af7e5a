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


_SCALARS = {"int": (int, "an integer"), "float": (float, "a number"), "str": (str, "a string"),
            "bool": (bool, "true or false")}


def _coerce(cls_name: str, key: str, value: Any, annotation: Any, error: type[Exception]) -> Any:
    """A value of a scalar field (``int``, ``float``, ``str``, ``bool``, optionally ``| None``) as that type."""
    if value is None:
        return None  # None where it is not allowed is the using code's business (it has the context)
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    parts = [p.strip() for p in text.split("|")]
    kinds = [p for p in parts if p != "None"]
    if len(kinds) != 1 or kinds[0] not in _SCALARS:
        return value  # containers and other types are checked by the code that uses them
    kind, what = _SCALARS[kinds[0]]
    if kind is str:
        return value
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif isinstance(value, bool):
            pass  # True is not a number here
        elif kind is int and isinstance(value, float):
            if value.is_integer():
                return int(value)
        else:
            return kind(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise error(f"{cls_name}.{key} must be {what}, got {value!r}")


def dataclass_from(cls: type, node: Any, error: type[Exception] = ValueError, tuples: bool = True,
                   section: str | None = None) -> Any:
    """A config section (mapping, OmegaConf node, ``None`` or already a ``cls``) -> a ``cls`` dataclass.

    Unknown keys and values of the wrong scalar type (``border=abc`` for an ``int`` field) raise ``error``
    with one line naming the key (as ``<section>.<key>``; ``section`` defaults to the class name); list
    values become tuples (``tuples``).
    """
    if isinstance(node, cls):
        return node
    node = to_plain(node)
    if node is None:
        node = {}
    name = section or cls.__name__
    if not isinstance(node, Mapping):
        raise error(f"{name} must be a mapping of keys, got {type(node).__name__}")
    annotations = {f.name: f.type for f in fields(cls)}
    unknown = set(node) - set(annotations)
    if unknown:
        raise error(f"unknown {name} keys {sorted(unknown)}; valid keys: {sorted(annotations)}")
    values = {k: _coerce(name, k, v, annotations[k], error) for k, v in node.items()}
    return cls(**{k: tuple(v) if tuples and isinstance(v, list) else v for k, v in values.items()})


def instantiate_reporting(spec: Any, causes: tuple[type[BaseException], ...], **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(spec, **kwargs)``, but an error of one of the ``causes`` types raised by the
    target's constructor comes out as itself, not wrapped in Hydra's ``InstantiationException`` (whose message
    adds the target and ``full_key``): the entry points print such errors as one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, causes):
            raise exc.__cause__ from None
        raise
