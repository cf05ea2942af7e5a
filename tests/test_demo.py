"""The end-to-end demo: the report's contents (fast), the VAE warm-up, the whole `demo.py` run (slow)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from syncdreamer.pipelines.demo import DemoState
from syncdreamer.pipelines.report import loss_svg, read_loss_curve, write_report

REPO = Path(__file__).resolve().parents[1]


def _png(path, color, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(path)


def test_report_shows_every_part(tmp_path):
    st = DemoState(out=tmp_path, repo=REPO, uid="obj", elevation_deg=12.5)
    st.data_root, st.views_dir = tmp_path / "data", tmp_path / "gen" / "obj"
    st.train_dir, st.recon_dir, st.eval_dir = tmp_path / "train", tmp_path / "rec", tmp_path / "eval"
    st.input_png = tmp_path / "in.png"
    _png(st.input_png, 10)
    for i in range(16):
        _png(st.views_dir / f"{i:03d}.png", 100)
        _png(st.data_root / "target" / "obj" / f"{i:03d}.png", 200)
    _png(st.train_dir / "images" / "val" / "step_0000010.png", 50)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(st.recon_dir.mkdir(parents=True) or st.recon_dir / "turntable.gif")
    (st.train_dir / "csv").mkdir(parents=True)
    (st.train_dir / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,1.0,\n0,1,0.5,\n0,1,,0.7\n0,2,0.25,\n")
    st.eval_dir.mkdir()
    (st.eval_dir / "metrics.csv").write_text("object,sample,status,psnr,mask_iou,chamfer\nobj,0,ok,13.2,0.617,0.21\n")
    st.timings = {"train": 10.0, "total": 30.0}
    html = write_report(st, tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64") == 1 + 32 + 1  # input, 16 generated + 16 GT views, val grid
    assert "data:image/gif;base64" in html  # turntable
    assert "<svg" in html and html.count("<circle") == 1  # loss curve with the one val point
    assert "<td>13.2</td>" in html and "<td>0.617</td>" in html and "<td>0.21</td>" in html and "obj" in html
    assert read_loss_curve(st.train_dir)["train/loss"] == [(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)]
    assert "no loss log" in loss_svg({"train/loss": [], "val/loss": []})


def test_vae_warmup_fits_and_caches(tmp_path):
    from syncdreamer.models.vae import KLAutoencoder
    from syncdreamer.systems.vae_warmup import fit_autoencoder

    torch.manual_seed(0)
    vae = KLAutoencoder(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_num_groups=4)
    x = torch.ones(4, 3, 16, 16)
    x[:, :, 4:12, 4:12] = -0.5  # a dark square on white
    losses = fit_autoencoder(vae, x, steps=60, lr=3e-3, batch_size=4, log_every=0)
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.requires_grad for p in vae.parameters())  # flags restored


def test_vae_equivariance_makes_pooled_latents_decode_to_pooled_images():
    """vae_warmup.equivariance: with the scale-equivariance term, decoding a 2x2-pooled latent gives the 2x2-pooled
    image (the latent behaves like a small image) twice as well as without it, at about the same reconstruction."""
    import torch.nn.functional as F

    from syncdreamer.models.vae import KLAutoencoder
    from syncdreamer.systems.vae_warmup import fit_autoencoder

    g = torch.Generator().manual_seed(0)
    x = torch.ones(8, 3, 16, 16)
    for i in range(len(x)):  # coloured rectangles on white
        r, c = torch.randint(1, 8, (2,), generator=g)
        x[i, :, r:r + 8, c:c + 6] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    errors = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        vae = KLAutoencoder(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_num_groups=4)
        losses = fit_autoencoder(vae, x, steps=60, lr=3e-3, batch_size=8, log_every=0, equivariance=weight)
        with torch.no_grad():
            z = vae.posterior(x)[0]
            full = (vae.vae.decode(z).sample - x).abs().mean()
            small = (vae.vae.decode(F.avg_pool2d(z, 2)).sample - F.avg_pool2d(x, 2)).abs().mean()
        errors[weight] = float(full), float(small)
        assert losses[-1] < 0.5 * losses[0]
    assert errors[1.0][1] < 0.7 * errors[0.0][1], errors  # measured: 0.113 vs 0.213 (60 steps)
    assert errors[1.0][0] < 1.5 * errors[0.0][0], errors  # the reconstruction itself: 0.133 vs 0.129


def test_vae_seed_gives_one_fitted_vae_whatever_the_run(tmp_path):
    """vae_warmup.seed: the VAE's initial weights and fit come from that seed alone, so runs built under different
    seeds (or with other layers drawn first) share one fitted, cached VAE; without it each run fits its own."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from syncdreamer.data import layout
    from syncdreamer.models.vae import KLAutoencoder
    from syncdreamer.systems.runner import vae_warmup_args
    from syncdreamer.systems.vae_warmup import reinitialize, warmup_vae

    def build(seed, extra_draws=0):
        torch.manual_seed(seed)
        torch.randn(extra_draws)  # layers built before the VAE
        return KLAutoencoder(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_num_groups=4)

    a, b = build(0), build(1, extra_draws=7)
    with torch.no_grad():
        for p in b.parameters():
            p.fill_(float("nan"))  # every parameter must be redrawn
    state = torch.random.get_rng_state()
    reinitialize(a, 3)
    reinitialize(b, 3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's random stream is untouched
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    reinitialize(b, 4)
    assert not all(torch.equal(va, vb) for va, vb in zip(a.state_dict().values(), b.state_dict().values()))

    rng = np.random.default_rng(0)
    for uid in ("u0", "u1"):
        for i in range(2):
            path = layout.view_path(tmp_path, "target", uid, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8)).save(path)
    fit = dict(steps=2, lr=1e-3, batch_size=2)
    runs = {}
    for run_seed, extra in ((0, 0), (1, 7), (2, 3)):
        cfg = OmegaConf.create({"seed": run_seed, "vae_warmup": {**fit, "seed": 5 if run_seed < 2 else None}})
        model = SimpleNamespace(first_stage_model=build(run_seed, extra))
        args = vae_warmup_args(cfg)
        runs[run_seed] = (warmup_vae(model, tmp_path, ["u0", "u1"], 16, 2, cache_dir=tmp_path / "cache", **args), model)
    args = vae_warmup_args(OmegaConf.create({"seed": 2, "vae_warmup": {**fit, "seed": None}}))
    assert args == {**fit, "kl_weight": 1e-6, "equivariance": 0.0, "seed": 2}
    assert runs[0][0] == runs[1][0] != runs[2][0]  # one cache file for vae_warmup.seed=5, another for the own-seed run
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    for (k, va), vb in zip(runs[0][1].first_stage_model.state_dict().items(),
                           runs[1][1].first_stage_model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_slurm_templates_are_valid_bash():
    for script in sorted((REPO / "slurm").glob("*.sbatch")):
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow
@pytest.mark.blender
def test_demo_end_to_end(tmp_path):
    """`python demo.py` with shortened stages: every stage runs and report.html holds every part."""
    if shutil.which("blender") is None and not os.environ.get("CI"):
        pytest.skip("Blender not installed")
    out = tmp_path / "demo"
    def hydra_list(items):  # a Hydra list override whose elements contain '='
        return "[" + ",".join(f"'{i}'" for i in items) + "]"

    train = ["experiment=smoke", "logger=csv", "trainer.max_steps=20", "trainer.val_check_interval=10",
             "vae_warmup.steps=20", f"paths.data_dir={tmp_path / 'data'}",
             "callbacks.model_checkpoint.every_n_train_steps=10"]
    cmd = [sys.executable, "demo.py", f"output_dir={out}", f"train_overrides={hydra_list(train)}",
           f"reconstruct_overrides={hydra_list(['recon=fast', 'steps=60'])}",
           f"generate_overrides={hydra_list(['sample_steps=4', 'device=cpu'])}"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    html = (out / "report.html").read_text()
    assert "data:image/gif;base64" in html and "<svg" in html and "<table>" in html
    assert (out / "evaluate" / "metrics.csv").exists()
