"""Pack a validated data set into webdataset shards (Hydra config ``conf/pack.yaml``).

    python data_prep/pack.py root=<render folder> [out_dir=<root>/shards] [kind=images|latents] [task=k num_tasks=n]

Reads ``<root>/manifest.parquet`` (usable objects of ``split``) and writes ``<out_dir>/shards.json`` and
``<split>-NNNNNN.tar``; see :mod:`syncdreamer.data.shards`. Resumable: shards already there are kept.
Train from them with ``data.format=shards data.shards=<out_dir>``. Exit 0 on success, 2 on a usage error.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from syncdreamer.data.dataset import DataError, resolve_uids
from syncdreamer.data.manifest import read_manifest, usable_uids
from syncdreamer.data.shards import pack_shards


def select(cfg: DictConfig) -> list[str]:
    """The uids to pack: the manifest's usable objects of ``split`` (or of ``uid_list``), manifest order."""
    table = read_manifest(cfg.root, columns=["uid", "split", "status", "reason"])
    usable, _ = usable_uids(table, None if cfg.split == "all" else str(cfg.split))
    if cfg.uid_list is None:
        return usable
    keep = set(usable_uids(table)[0])
    return [u for u in resolve_uids(cfg.root, str(cfg.uid_list)) if u in keep]


@hydra.main(config_path="../conf", config_name="pack", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    out_dir = Path(str(cfg.out_dir)) if cfg.out_dir else Path(str(cfg.root)) / "shards"
    try:
        uids = select(cfg)
        summary = pack_shards(cfg.root, uids, out_dir, int(cfg.view_num), int(cfg.image_size),
                              int(cfg.objects_per_shard), str(cfg.kind), str(cfg.split), cfg.cache_dir,
                              int(cfg.task), int(cfg.num_tasks), bool(cfg.progress))
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"task {cfg.task}/{cfg.num_tasks}: {summary['written']} shards written ({summary['objects']} objects), "
          f"{summary['existing']} already there, {summary['shards']} in total -> {out_dir}")


if __name__ == "__main__":
    main()
