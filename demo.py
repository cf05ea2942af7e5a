"""End-to-end demo (``make demo``): render -> train (smoke) -> generate -> reconstruct -> evaluate -> report.html."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from syncdreamer.cli import check_missing, require_options


@hydra.main(config_path="conf", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    check_missing(cfg)
    from syncdreamer.pipelines.demo import DemoError, run_demo

    try:
        report = run_demo(cfg)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"\nreport: {report}")


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parent / "conf" / "demo.yaml")
    main()
