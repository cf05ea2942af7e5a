"""What every Hydra entry point (train, generate, reconstruct, evaluate, demo, data_prep/*) shares: usage
errors as one line on stderr and exit code 2, never a traceback.

* :func:`require_options` runs before ``@hydra.main``: a required option (``???`` in the primary config file)
  that the command line does not set is reported as ``error: missing required option views=...`` before
  Hydra resolves its run folder (which often interpolates that very option) or creates any folder.
* :func:`check_missing` does the same on the composed config (required keys that a config group left open).
* :func:`check_device` reports a device this machine does not have (``device=cuda`` without a GPU).
* :func:`usage_error` prints the one line and exits with 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

__all__ = ["USAGE_EXIT", "usage_error", "missing_message", "require_options", "check_missing", "check_device"]

#: Exit code of a usage error (bad option, missing option, bad input file).
USAGE_EXIT = 2


def usage_error(message: str) -> NoReturn:
    """Print ``error: <message>`` (first line only) on stderr and exit with :data:`USAGE_EXIT`."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "invalid input"
    print(f"error: {first}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def missing_message(keys, script: str | None = None) -> str:
    """``["views"]`` -> ``missing required option views=... (python reconstruct.py views=<value> ...)``."""
    keys = sorted(keys)
    opts = " ".join(f"{k}=<value>" for k in keys)
    what = "option" if len(keys) == 1 else "options"
    example = f" (python {script} {opts} ...)" if script else ""
    return f"missing required {what} {' '.join(f'{k}=...' for k in keys)}{example}"


def _command_line_value(key: str, argv) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if "=" in a and a.split("=", 1)[0].lstrip("+") == key]
    return values[-1] if values else None


def _keys_set_by_groups(conf_dir: Path, argv) -> set[str]:
    """Top-level keys that the global-package config groups chosen on the command line set (for example
    ``benchmark=proxy`` sets ``gt_dir``): such keys are not missing even if the primary config leaves them ``???``."""
    keys: set[str] = set()
    for arg in argv:
        if "=" not in arg:
            continue
        group, choice = arg.split("=", 1)
        path = conf_dir / group.lstrip("+") / f"{choice}.yaml"
        if not group or "/" in choice or not path.is_file():
            continue
        if "@package _global_" not in path.read_text().split("\n", 1)[0]:
            continue
        node = OmegaConf.load(str(path))
        keys.update(k for k in node if isinstance(k, str) and not OmegaConf.is_missing(node, k))
    return keys


def require_options(config_file: str | Path, argv=None, script: str | None = None,
                    existing: tuple[str, ...] = ()) -> None:
    """Exit with one line when a top-level ``???`` option of ``config_file`` is not set in ``argv``, or when
    an option named in ``existing`` (an input folder) names a path that does not exist.

    Call it before the ``@hydra.main`` function, so that nothing is resolved or created first (Hydra makes its
    run folder before the task starts, and some configs put it inside an input folder). Hydra flags
    (``--help``, ``--cfg``, ``-m`` ...) skip the check so that Hydra can answer them itself.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("-") for a in argv):
        return
    cfg = OmegaConf.load(str(config_file))
    required = [k for k in cfg if isinstance(k, str) and OmegaConf.is_missing(cfg, k)]
    set_by_groups = _keys_set_by_groups(Path(config_file).parent, argv)
    missing = [k for k in required if _command_line_value(k, argv) is None and k not in set_by_groups]
    if missing:
        usage_error(missing_message(missing, script or Path(sys.argv[0]).name))
    for key in existing:
        value = _command_line_value(key, argv)
        if value and "${" not in value and not Path(value).expanduser().exists():
            usage_error(f"{key}={value} does not exist (check the path)")


def check_device(name) -> None:
    """Exit with one line when ``device`` names no usable torch device (``cuda`` on a machine without a GPU)."""
    if name in (None, "auto"):
        return
    import torch

    try:
        dev = torch.device(str(name))
    except RuntimeError:
        usage_error(f"unknown device {name!r} (use auto | cpu | cuda | cuda:<i>)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        usage_error(f"device={name} but no CUDA GPU is available here (use device=cpu or device=auto)")


def check_missing(cfg: DictConfig, script: str | None = None) -> None:
    """Exit with one line when the composed ``cfg`` still has required (``???``) values."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        usage_error(missing_message(missing, script or Path(sys.argv[0]).name))
