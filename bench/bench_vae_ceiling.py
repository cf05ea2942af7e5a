"""The best any diffusion model on a fitted VAE can score: the held-out GT views through the VAE (markdown table).

    python bench/bench_vae_ceiling.py [train overrides...]      # default: experiment=proxy

Builds the model of the training config (seeded as ``train.py`` seeds it), fits or loads the cached VAE
warm-up exactly as training does (``vae_warmup``), then for every object of the data set's validation list
encodes its 16 GT target views (posterior mean), decodes them, quantises to 8 bit as a generated PNG is, and
scores them with the proxy benchmark's metrics (PSNR / SSIM on white, fg PSNR = PSNR inside the GT alpha,
i.e. the object's colours, and mask IoU against the GT alpha). A generator whose numbers are far below this
table is limited by the diffusion model, not by the latent space.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main(overrides: list[str]) -> None:
    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from syncdreamer.data.dataset import DataError, resolve_uids
    from syncdreamer.imaging import composite_on_white
    from syncdreamer.metrics.image import foreground_psnr, mask_iou, psnr, ssim
    from syncdreamer.recon.io import load_views
    from syncdreamer.systems.runner import ConfigError, vae_warmup_args
    from syncdreamer.systems.vae_warmup import warmup_vae

    default = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=proxy"]
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            cfg = compose("train", overrides=default + [f"paths.root_dir={REPO}"] + overrides)
    except Exception as exc:  # Hydra's composition / override-grammar errors: one line, not a traceback
        sys.exit(f"bench_vae_ceiling: {str(exc).splitlines()[0]} (overrides are train.py's, e.g. seed=1)")
    try:
        seed, settings = int(cfg.get("seed") or 0), vae_warmup_args(cfg)
    except ConfigError as exc:
        sys.exit(f"bench_vae_ceiling: {exc}")
    except (ValueError, TypeError) as exc:
        sys.exit(f"bench_vae_ceiling: seed must be an integer ({str(exc).splitlines()[0]})")
    if settings["steps"] <= 0:
        sys.exit("vae_warmup.steps is 0 in this config: there is no fitted VAE to measure (use experiment=proxy)")
    root = Path(str(cfg.data.root))
    val_file = root / "val_uids.txt"
    if not val_file.is_file():
        sys.exit(f"{val_file} not found: render the data set first (python train.py {' '.join(overrides) or 'experiment=proxy'} "
                 "trainer.max_steps=1)")
    L.seed_everything(seed)
    model = instantiate(cfg.model)
    try:
        uids = resolve_uids(root, "train_uids.txt")  # the VAE warm-up is keyed by the training objects
    except DataError as exc:
        sys.exit(f"bench_vae_ceiling: {exc}")
    size, n = int(cfg.model.image_size), int(cfg.model.view_num)
    warmup_vae(model, root, uids, size, n, **settings)
    vae = model.first_stage_model.eval()
    rows = []
    for uid in resolve_uids(root, "val_uids.txt"):
        gt = load_views(root / "target" / uid, n)                      # (N, H, W, 4) in [0, 1]
        x = torch.as_tensor(composite_on_white(gt)).permute(0, 3, 1, 2).float() * 2 - 1
        with torch.no_grad():
            rec = vae.decode(vae.encode(x, sample=False)).clamp(-1, 1)
        rec8 = ((rec + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        rows.append((uid, psnr(rec8, gt).mean(), np.nanmean(foreground_psnr(rec8, gt)), ssim(rec8, gt).mean(),
                     mask_iou(rec8, gt).mean()))
    print(f"VAE ceiling on {len(rows)} held-out objects of {root} ({n} views, {size} px)\n")
    print("| object | PSNR | fg PSNR | SSIM | mask IoU |\n|---|---|---|---|---|")
    for uid, p, f, s, m in rows:
        print(f"| {uid} | {p:.2f} | {f:.2f} | {s:.3f} | {m:.3f} |")
    mean = np.array([r[1:] for r in rows]).mean(0)
    print(f"| **mean** | **{mean[0]:.2f}** | **{mean[1]:.2f}** | **{mean[2]:.3f}** | **{mean[3]:.3f}** |")


if __name__ == "__main__":
    main(sys.argv[1:])
