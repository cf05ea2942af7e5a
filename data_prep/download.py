"""Download Objaverse objects with the ``objaverse`` package (Hydra config ``conf/download.yaml``).

    python data_prep/download.py download_dir=/data/objaverse lvis_categories='[mug]' count=50

See :mod:`syncdreamer.data.objaverse_download`. Then render them with
``python data_prep/render.py input=<download_dir>/hf-objaverse-v1/glbs uids=<download_dir>/uids.txt output_dir=...``.
Exit code 0 when every selected uid is on disk, 1 when some failed or were unknown, 2 on a usage error.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from syncdreamer.cli import check_missing, require_options
from syncdreamer.data.objaverse_download import DownloadError, run_download


@hydra.main(config_path="../conf", config_name="download", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    check_missing(cfg)
    try:
        summary = run_download(OmegaConf.to_container(cfg, resolve=True))
    except (DownloadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if summary["failed"] or summary["unknown_uid"]:
        sys.exit(1)


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parents[1] / "conf" / "download.yaml")
    main()
