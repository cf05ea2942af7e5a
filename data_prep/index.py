"""Index a render folder into ``<root>/manifest.parquet`` (Hydra config ``conf/index.yaml``).

    python data_prep/index.py root=<dir with target/ and input/> [views=16]

One row per object (see :mod:`syncdreamer.data.manifest`); incomplete or unreadable objects get a status and a
reason, one ``INCOMPLETE|INVALID <uid>: <reason>`` line each on stderr. Training reads only this file at setup.
Exit code 0 when every object is usable, 1 when some are not, 2 on a usage error.
"""
import sys

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from syncdreamer.data.manifest import USABLE, index_dataset, manifest_path


@hydra.main(config_path="../conf", config_name="index", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    if int(cfg.views) < 1:
        print(f"error: views must be >= 1, got {cfg.views}", file=sys.stderr)
        sys.exit(2)
    try:
        rows = index_dataset(cfg.root, int(cfg.views), progress=bool(cfg.progress),
                             log=lambda line: tqdm.write(line, file=sys.stderr))
    except FileNotFoundError as exc:
        print(f"error: {exc}; pass root=<render folder>", file=sys.stderr)
        sys.exit(2)
    bad = sum(r["status"] not in USABLE for r in rows)
    print(f"{len(rows) - bad}/{len(rows)} objects usable -> {manifest_path(cfg.root)}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
