"""The laptop-scale proxy (issue 12): mask IoU, the benchmark's uid list, and (slow) a short proxy training run
whose model uses its conditions (input latent, CLIP token, the input object) and beats an untrained model on foreground-mask IoU."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from syncdreamer.metrics.benchmark import list_objects
from syncdreamer.metrics.image import foreground_mask, foreground_psnr, mask_iou, psnr

REPO = Path(__file__).resolve().parents[1]


def _views(boxes, size=16, alpha=False):
    out = np.ones((len(boxes), size, size, 4 if alpha else 3))
    if alpha:
        out[..., 3] = 0.0
    for v, (y0, y1, x0, x1) in zip(out, boxes):
        v[y0:y1, x0:x1, :3] = (0.8, 0.1, 0.1)
        if alpha:
            v[y0:y1, x0:x1, 3] = 1.0
    return out


def test_foreground_psnr_scores_only_the_objects_pixels():
    gt = _views([(0, 8, 0, 8), (0, 8, 0, 8)], alpha=True)  # red 8x8 box (64 of 256 px) on transparent
    pred = gt[..., :3].copy()
    pred[0, 0:8, 0:8] = (0.8, 0.1, 0.4)  # view 0: the box's blue channel off by 0.3 -> fg MSE 0.03
    pred[1, 12:16, 12:16] = 0.0          # view 1: the box exact, a black corner in the background
    fg = foreground_psnr(pred, gt)
    assert fg[0] == pytest.approx(10 * np.log10(1 / 0.03))
    assert fg[1] == np.inf  # the background does not count
    # psnr over the whole image dilutes view 0's colour error with the 192 exact background pixels
    assert psnr(pred, gt)[0] == pytest.approx(10 * np.log10(1 / (0.03 * 64 / 256)))
    empty = np.zeros((1, 16, 16, 4))
    assert np.isnan(foreground_psnr(np.ones((1, 16, 16, 3)), empty)[0])
    with pytest.raises(ValueError, match="differ"):
        foreground_psnr(pred[:1], gt)


def test_mask_iou_counts_pixels_against_gt_alpha():
    gt = _views([(0, 8, 0, 8), (0, 8, 0, 8)], alpha=True)
    pred = _views([(0, 8, 0, 8), (0, 8, 4, 12)])  # exact; shifted by half a box
    iou = mask_iou(pred, gt)
    assert iou[0] == pytest.approx(1.0) and iou[1] == pytest.approx(32 / 96)
    # alpha of the prediction is ignored: a transparent but coloured prediction is composited on white
    pred_rgba = np.concatenate([pred, np.zeros_like(pred[..., :1])], -1)
    assert mask_iou(pred_rgba, gt).tolist() == [0.0, 0.0]
    # near-white pixels are background, a light grey one is foreground
    light = np.ones((1, 4, 4, 3))
    light[0, 0, 0] = 0.95
    light[0, 1, 1] = 0.6
    assert foreground_mask(light).sum() == 1
    assert mask_iou(np.ones((1, 4, 4, 3)), np.zeros((1, 4, 4, 4))).tolist() == [1.0]  # both empty
    with pytest.raises(ValueError, match="differ"):
        mask_iou(pred[:1], gt)


def test_benchmark_objects_from_uid_file(tmp_path):
    (tmp_path / "val_uids.txt").write_text("b\n\na\n")
    assert list_objects(tmp_path, "val_uids.txt") == ["b", "a"]
    assert list_objects(tmp_path, ["x"]) == ["x"]
    with pytest.raises(ValueError, match="not found"):
        list_objects(tmp_path, "missing.txt")


def test_proxy_configs_compose():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=proxy"])
        assert cfg.model.image_size == 64 and cfg.data.prepare.num_objects >= 200 and cfg.system.finetune_unet
        data = OmegaConf.to_container(cfg.data, resolve=False)  # paths need the Hydra runtime to resolve
        assert data["root"].endswith("proxy_e30_${model.image_size}px") and data["latent_cache"]
        assert list(cfg.data.prepare.render.input_elevation) == [30.0, 30.0]  # inputs at the benchmark's elevation
        ev = compose("evaluate", overrides=["benchmark=proxy", "checkpoint=x.ckpt"])
        assert ev.generate.checkpoint == "x.ckpt" and "mask_iou" in ev.metrics and ev.objects == "val_uids.txt"
        # the benchmark's ground truth is data=proxy's folder at the proxy's 64 px (two configs spell the name)
        gt_dir = OmegaConf.to_container(ev, resolve=False)["gt_dir"]
        assert gt_dir.endswith("/data/" + data["root"].rsplit("/", 1)[1].replace("${model.image_size}", "64"))
        assert compose("evaluate", overrides=["gt_dir=g"]).generate is None  # benchmark: null by default
        assert cfg.model.prediction_type == "v" and cfg.system.target_views == 16 and cfg.vae_warmup.calibrate_scale
    demo = OmegaConf.load(REPO / "conf" / "demo.yaml")  # make demo runs a shorter cut of the same recipe
    assert "experiment=proxy" in demo.train_overrides and "cfg_scale=1.0" in demo.generate_overrides


def _sample_views(model, image, elevation, seed=1, steps=10, drop_concat=False, drop_clip=False):
    from syncdreamer.diffusion.sampler import SyncDDIMSampler
    from syncdreamer.models.syncdreamer import Condition

    with torch.no_grad():
        cond = model.prepare_condition(image[None], elevation.reshape(1), sample=False)
        if drop_concat:
            cond = Condition(torch.zeros_like(cond.input_latent), cond.clip_embed, cond.elevation)
        if drop_clip:  # the context token zeroed after cc_projection, as the model's unconditional branch does
            cond.clip_tokens = torch.zeros_like(cond.clip_tokens)
        lat = SyncDDIMSampler(model, steps, 1.0, 1.0, None).sample(cond, generator=torch.Generator().manual_seed(seed))
        return ((model.decode_first_stage(lat[0]).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_short_proxy_run_uses_its_condition_and_beats_untrained(tmp_path):
    """train.py experiment=proxy on 12 rasterised objects for a short budget; the trained model's samples depend
    on the input latent and match the ground-truth silhouettes better than an untrained model's."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from syncdreamer.data import layout
    from syncdreamer.systems.runner import load_model_from_checkpoint

    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "experiment=proxy", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
           f"hydra.run.dir={run}", "+data.prepare.render.renderer=cpu", "data.prepare.num_objects=12",
           "data.prepare.val_objects=2", "data.batch_size=4", "vae_warmup.steps=150", "trainer.max_steps=200",
           "trainer.val_check_interval=200", "trainer.limit_val_batches=0", "system.ema.decay=null"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trained, config = load_model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    root = Path(config["data"]["root"])  # the run's resolved data folder (data=proxy names it)
    assert root.parent == tmp_path / "data"
    torch.manual_seed(0)  # the untrained model: a fresh denoiser with the run's fitted VAE (and CLIP)
    untrained = instantiate(OmegaConf.create(config["model"])).eval()
    untrained.first_stage_model.load_state_dict(trained.first_stage_model.state_dict())
    untrained.clip_image_encoder.load_state_dict(trained.clip_image_encoder.state_dict())
    uids = layout.read_uid_list(root / "train_uids.txt")
    uid = uids[0]
    gt = np.stack([layout.read_view_rgba(layout.view_path(root, "target", uid, i)) for i in range(16)])
    inputs = {u: layout.read_view_tensor(layout.view_path(root, "target", u, 0), 64) for u in uids}
    image = inputs[uid]
    # the other input: the training object whose input image differs most from uid's (a near-twin, e.g. another
    # box of a similar colour, may legitimately give a near-identical sample from a model this short)
    other = max(uids[1:], key=lambda u: (inputs[u] - image).abs().mean().item())
    elev = torch.tensor(np.radians(30.0), dtype=torch.float32)
    views = _sample_views(trained, image, elev)
    dropped = _sample_views(trained, image, elev, drop_concat=True)
    assert np.abs(views - dropped).mean() > 0.02  # the input latent changes the sample
    no_clip = np.abs(views - _sample_views(trained, image, elev, drop_clip=True)).mean()
    # the CLIP token reaches the sample too, far less: the random tiny CLIP embeds every object alike (cosine
    # 0.997), so its token says almost nothing about the input (0.0022 measured with cc_projection trained)
    assert no_clip > 1e-4
    between = np.abs(views - _sample_views(trained, inputs[other], elev)).mean()
    iou_trained = mask_iou(views, gt).mean()
    iou_untrained = mask_iou(_sample_views(untrained, image, elev), gt).mean()
    print(f"dropped concat {np.abs(views - dropped).mean():.4f}, dropped CLIP {no_clip:.4f}, other input {between:.4f}, "
          f"({other}), mask IoU trained {iou_trained:.3f} vs untrained {iou_untrained:.3f}")
    assert between > 0.01  # another input object, same noise: another sample
    assert iou_trained > iou_untrained + 0.05, (iou_trained, iou_untrained)
