"""Train SyncDreamer: ``python train.py experiment=<smoke|syncdreamer|ablation_...> [overrides]``.

Thin Hydra entry point; the run lives in :func:`syncdreamer.systems.runner.train` (configs under conf/,
how to run each experiment in experiments/README.md).
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from syncdreamer.cli import check_missing, require_options


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    check_missing(cfg)
    from syncdreamer.data.dataset import DataError
    from syncdreamer.systems.runner import ConfigError, train

    try:
        metrics = train(cfg)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("train/loss")


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parent / "conf" / "train.yaml")
    main()
