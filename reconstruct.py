"""NeuS reconstruction of 16 views (Hydra config ``conf/reconstruct.yaml``).

    python reconstruct.py views=<folder of 000..015.png | 256x4096 strip> output_dir=<dir> [recon=auto|official|fast]

``recon=auto`` (default): the official NeuS preset on a GPU, the fast one on a CPU (one line says which);
``recon=official`` on a CPU needs ``recon.allow_slow=true``. Writes mesh.ply / mesh.glb (vertex colours),
turntable.gif and recon.json into output_dir; the library is :mod:`syncdreamer.recon.pipeline`. Exit code 2 on
bad input or an unusable device (one-line message).
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from syncdreamer.cli import check_device, check_missing, require_options
from syncdreamer.recon.pipeline import reconstruct


@hydra.main(config_path="conf", config_name="reconstruct", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    check_missing(cfg)
    check_device(cfg.get("device"))
    try:
        summary = reconstruct(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"mesh: {summary['files'].get('ply') or summary['files']}  ({summary['faces']} faces, "
          f"preset {summary['preset']}, fit {summary['fit_seconds']} s on {summary['device']})")


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parent / "conf" / "reconstruct.yaml")
    main()
