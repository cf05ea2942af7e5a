"""Validate a rendered data set and write train / val uid lists (Hydra config ``conf/validate.yaml``).

    python data_prep/validate.py root=<rendered dir> meshes=<source mesh folder> val_fraction=0.02

See :mod:`syncdreamer.data.validate` for the checks. Exit code 0 when every object is valid, 1 when some
are not (they are left out of the lists; ``validation.jsonl`` says why), 2 on a usage error.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from syncdreamer.cli import check_missing, require_options
from syncdreamer.data.validate import ValidationConfig, validate_dataset


@hydra.main(config_path="../conf", config_name="validate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    check_missing(cfg)
    check = ValidationConfig.from_mapping(OmegaConf.to_container(cfg.check, resolve=True))
    try:
        summary = validate_dataset(cfg.root, check, meshes=cfg.meshes, out_dir=cfg.out_dir,
                                   val_fraction=float(cfg.val_fraction), split_seed=int(cfg.split_seed),
                                   require_mesh=bool(cfg.require_mesh))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if summary["invalid"]:
        sys.exit(1)


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parents[1] / "conf" / "validate.yaml", existing=("root",))
    main()
