"""The benchmark protocol over a folder of objects (Hydra config ``conf/evaluate.yaml``).

    python evaluate.py gt_dir=<GT root> predictions_dir=<predictions> output_dir=<dir> [reconstruct=true]

Writes metrics.csv, summary.md and summary.json into output_dir (library:
:mod:`syncdreamer.metrics.benchmark`). Exit code 0 when every object was measured, 1 when some failed
(see the CSV), 2 on a configuration error.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from syncdreamer.cli import check_missing, require_options
from syncdreamer.metrics.benchmark import run_benchmark


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    check_missing(cfg)
    try:
        result = run_benchmark(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(open(result["files"]["markdown"]).read())
    if result["summary"]["failed_objects"]:
        sys.exit(1)


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parent / "conf" / "evaluate.yaml")
    main()
