"""SyncDreamerSystem: the golden training loss through the real step, parameter groups and learning rates,
warm-up, frozen parts, draws, condition dropping, EMA and latent/image batch equivalence."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from golden_utils import Golden, assert_close, fixture_params
from syncdreamer.models import SyncDreamer
from syncdreamer.systems import Draws, SyncDreamerSystem, warmup_factor

CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny_model_cfg(**overrides):
    """conf/model/syncdreamer_tiny.yaml (merged over syncdreamer.yaml) with overrides."""
    base = OmegaConf.load(CONF / "model" / "syncdreamer.yaml")
    tiny = OmegaConf.load(CONF / "model" / "syncdreamer_tiny.yaml")
    tiny.pop("defaults", None)
    return OmegaConf.merge(base, tiny, overrides)


def small_model(randomize_zero_init: bool = False, **overrides) -> SyncDreamer:
    """The tiny model at 64 px (latent 8), V = D = 8: fast on CPU. ``randomize_zero_init`` replaces the
    zero-initialised layers (UNet output, depth-attention outputs) by small random weights so that every
    input influences the prediction."""
    torch.manual_seed(0)
    cfg = dict(image_size=64, volume_resolution=8, frustum_depth=8, focal=None)
    cfg.update(overrides)
    model = instantiate(tiny_model_cfg(**cfg))
    if randomize_zero_init:
        with torch.no_grad():
            for p in model.model.parameters():
                if p.ndim > 1 and not p.any():
                    p.normal_(0.0, 0.05)
    return model


# ---------------------------------------------------------------------------------------------- golden
@pytest.fixture(scope="module", params=fixture_params("denoiser"))
def golden(request):
    return Golden(request.param)


def test_golden_training_loss_through_the_system_step(golden):
    cfg = tiny_model_cfg(vae=None, clip=None)  # the fixture is the denoiser only
    model = instantiate(cfg)
    model.load_state_dict(golden.weights, strict=True)
    system = SyncDreamerSystem(model)
    T = golden.tensors
    batch = {"target_latent": T["train_x0"], "input_latent": T["input_latent_scaled"],
             "clip_embed": T["clip_embed_raw"], "input_elevation": T["elevation_rad"]}
    seen = {}

    def hook(x0):  # the golden draws routed into the real training step
        seen["x0"] = x0
        return Draws(t=T["train_t"], noise=T["train_noise"], target_index=T["train_target_index"])

    system.draw_hook = hook
    loss = system.training_step(batch, 0)
    tol = golden.tol("train_loss")
    assert_close(loss.reshape(1), T["train_loss"], tol["atol"], tol["rtol"], "train_loss")
    assert torch.equal(seen["x0"], T["train_x0"])
    # the same numbers through the explicit argument, plus the predicted noise of the target view
    loss2, eps = system.compute_loss(batch, draws=hook(None))
    assert_close(loss2.reshape(1), T["train_loss"], tol["atol"], tol["rtol"], "train_loss (draws=)")
    assert_close(eps, T["train_eps_pred_target_view"], 1e-4, 1e-4, "train_eps_pred_target_view")
    # gradients reach the trainable parts only
    loss.backward()
    groups = model.trainable_parameter_groups()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["volume"])
    assert all(p.grad is None for p in model.model.diffusion_model.input_blocks.parameters())


# ---------------------------------------------------------------------------------------------- optimiser
def test_parameter_groups_learning_rates_and_frozen_parts():
    model = small_model()
    system = SyncDreamerSystem(model, optimizer={"lr": 5e-5, "volume_lr_mult": 10.0})
    opt_cfg = system.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["depth_attention", "volume"]
    groups = model.trainable_parameter_groups()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for g in groups.values() for p in g}
    assert {id(p) for p in model.parameters() if p.requires_grad} == in_opt
    for frozen in (model.first_stage_model, model.clip_image_encoder, model.cc_projection,
                   model.model.diffusion_model.input_blocks, model.model.diffusion_model.middle_block):
        assert not any(p.requires_grad for p in frozen.parameters())
    # the warm-up: factor 0.02 at step 0, linear to 1 at step 100, then 1; volume at 10x
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5 * 0.02)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4 * 0.02)
    for _ in range(50):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5 * (0.02 + 0.98 * 0.5))
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4)
    assert opt.defaults["weight_decay"] == 0.01 and opt.defaults["betas"] == (0.9, 0.999)


def test_warmup_factor_numbers():
    assert warmup_factor(0, 100, 0.02) == pytest.approx(0.02)
    assert warmup_factor(25, 100, 0.02) == pytest.approx(0.265)
    assert warmup_factor(100, 100, 0.02) == 1.0
    assert warmup_factor(10 ** 6, 100, 0.02) == 1.0
    assert warmup_factor(0, 0, 0.02) == 1.0


def test_no_volume_ablation_trains_the_unet_and_freezes_the_volume():
    model = small_model(unet={"depth_attention": False})
    with pytest.raises(ValueError, match="finetune_unet"):
        SyncDreamerSystem(model)
    system = SyncDreamerSystem(model, finetune_unet=True)
    opt = system.configure_optimizers()["optimizer"]
    assert [g["name"] for g in opt.param_groups] == ["unet"]
    assert not any(p.requires_grad for p in model.spatial_volume.parameters())
    assert all(p.requires_grad for p in model.model.diffusion_model.parameters())
    assert not any(p.requires_grad for p in model.cc_projection.parameters())


def test_frozen_modules_stay_in_eval_mode():
    system = SyncDreamerSystem(small_model())
    system.train()
    assert system.model.spatial_volume.training
    assert not system.model.first_stage_model.training and not system.model.clip_image_encoder.training


# ---------------------------------------------------------------------------------------------- the step
def fake_image_batch(B=2, N=16, S=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"target_image": torch.rand(B, N, 3, S, S, generator=g) * 2 - 1,
            "input_image": torch.rand(B, 3, S, S, generator=g) * 2 - 1,
            "input_elevation": torch.tensor([0.1, 0.5])[:B]}


def test_draws_follow_the_official_distribution():
    system = SyncDreamerSystem(small_model())
    x0 = torch.zeros(512, 16, 4, 8, 8)
    d = system.draw(x0, torch.Generator().manual_seed(0))
    assert d.t.shape == (512,) and d.target_index.shape == (512, 1) and d.noise.shape == x0.shape
    assert d.t.min() >= 0 and d.t.max() <= 999 and d.t.float().std() > 200
    assert set(d.target_index.flatten().tolist()) == set(range(16))
    assert abs(d.noise.mean().item()) < 0.01 and abs(d.noise.std().item() - 1) < 0.01


def test_image_batches_and_cached_latent_batches_give_the_same_loss():
    model = small_model().eval()
    system = SyncDreamerSystem(model)
    batch = fake_image_batch()
    with torch.no_grad():
        B, N = 2, 16
        mean_t, _, std_t = model.first_stage_model.posterior(batch["target_image"].flatten(0, 1))
        mean_i, _, std_i = model.first_stage_model.posterior(batch["input_image"])
        clip = model.encode_clip(batch["input_image"])
    sf = model.scale_factor
    cached = {"target_latent_mean": (mean_t * sf).unflatten(0, (B, N)), "target_latent_std": (std_t * sf).unflatten(0, (B, N)),
              "input_latent_mean": mean_i * sf, "input_latent_std": std_i * sf, "clip_embed": clip,
              "input_elevation": batch["input_elevation"]}
    draws = system.draw(torch.zeros(B, N, 4, 8, 8), torch.Generator().manual_seed(1))
    with torch.no_grad():
        # same posterior noise: both paths draw target noise first, then the input noise, from the generator
        l_img, _ = system.compute_loss(batch, draws=draws, generator=torch.Generator().manual_seed(2))
        l_lat, _ = system.compute_loss(cached, draws=draws, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(l_img, l_lat, atol=1e-5, rtol=1e-5)


def test_batch_shape_errors_are_clear():
    system = SyncDreamerSystem(small_model())
    bad = fake_image_batch(S=32)
    with pytest.raises(ValueError, match="model expects 64x64"):
        system.compute_loss(bad)
    with pytest.raises(KeyError, match="target_image"):
        system.compute_loss({"input_elevation": torch.zeros(1)})


def test_condition_dropping_changes_the_prediction_only_when_on():
    model = small_model(randomize_zero_init=True, condition_drop={"drop_all": 1.0})  # drop everything for every sample
    with torch.no_grad():  # random biases too (GroupNorm ...): zero features must differ from no features
        for p in model.model.parameters():
            if p.ndim == 1 and not p.any():
                p.normal_(0.0, 0.05)
    system = SyncDreamerSystem(model, drop_conditions=True)
    batch = fake_image_batch()
    draws = system.draw(torch.zeros(2, 16, 4, 8, 8), torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, eps_keep = system.compute_loss(batch, draws=draws, generator=torch.Generator().manual_seed(3))
        _, eps_drop = system.compute_loss(batch, draws=draws, drop_conditions=True,
                                          generator=torch.Generator().manual_seed(3))
        # dropping all = the unconditional branch of CFG: zero concat latent and zero CLIP token
        x0, cond = system.encode_batch(batch, torch.Generator().manual_seed(3))
        cond = model.complete(cond)
        from syncdreamer.diffusion.schedule import q_sample

        xt = q_sample(x0, draws.t, draws.noise, model.sqrt_alphas_cumprod, model.sqrt_one_minus_alphas_cumprod)
        rows = torch.arange(2)
        x = xt[rows, draws.target_index[:, 0]]
        # ... and zero frustum features at every scale (the volume is dropped, the depth attention still runs)
        t_embed = model.embed_time(draws.t)
        frustum, tokens, _ = model.target_view_inputs(model.spatial_volume_for(xt, draws.t, cond, t_embed), t_embed,
                                                      cond, draws.target_index)
        zero_frustum = {k: torch.zeros_like(v) for k, v in frustum.items()}
        eps_u = model.model(x, draws.t, torch.zeros_like(tokens), zero_frustum, torch.zeros_like(cond.input_latent))
        no_frustum = model.model(x, draws.t, torch.zeros_like(tokens), None, torch.zeros_like(cond.input_latent))
    assert not torch.allclose(eps_keep, eps_drop)
    assert not torch.allclose(eps_u, no_frustum, atol=1e-4)  # the reference is not the volume-free UNet
    torch.testing.assert_close(eps_drop, eps_u, atol=1e-5, rtol=1e-5)


def test_ema_tracks_trainable_parameters_and_swaps():
    model = small_model()
    system = SyncDreamerSystem(model, ema={"decay": 0.5, "warmup": False})
    names = {n for n, _ in system.trainable_named_parameters()}
    assert set(system.ema.shadow) == names
    name, p = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    before = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
    system.ema.update()
    torch.testing.assert_close(system.ema.shadow[name], before + 0.5)
    with system.ema.swapped():
        torch.testing.assert_close(p.detach(), before + 0.5)
    torch.testing.assert_close(p.detach(), before + 1.0)
    state = system.ema.state_dict()
    other = SyncDreamerSystem(small_model(), ema={"decay": 0.5})
    other.ema.load_state_dict(state)
    assert other.ema.num_updates == 1
