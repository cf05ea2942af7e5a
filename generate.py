"""Image or text in, 16 consistent views out (thin Hydra entry point; logic in syncdreamer.pipelines.generate).

    python generate.py checkpoint=ckpt/syncdreamer-pretrain.ckpt input=teddy.png elevation=30 output_dir=out
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from syncdreamer.cli import check_missing, require_options


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    check_missing(cfg)
    from syncdreamer.pipelines.generate import run_cli

    code = run_cli(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parent / "conf" / "generate.yaml")
    main()
