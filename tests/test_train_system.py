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


def test_cosine_decay_after_warmup():
    """decay_steps: 1 at the end of warm-up, half way down at the midpoint, `final` at decay_steps and after."""
    assert warmup_factor(10, 20, 0.1, decay_steps=120, final=0.0) == pytest.approx(0.55)
    assert warmup_factor(20, 20, 0.1, decay_steps=120, final=0.0) == pytest.approx(1.0)
    assert warmup_factor(70, 20, 0.1, decay_steps=120, final=0.0) == pytest.approx(0.5)
    assert warmup_factor(70, 20, 0.1, decay_steps=120, final=0.2) == pytest.approx(0.6)
    assert warmup_factor(120, 20, 0.1, decay_steps=120, final=0.2) == pytest.approx(0.2)
    assert warmup_factor(500, 20, 0.1, decay_steps=120, final=0.2) == pytest.approx(0.2)
    assert warmup_factor(45, 0, 0.1, decay_steps=90) == pytest.approx(0.5)
    assert warmup_factor(500, 20, 0.1, decay_steps=None) == 1.0


def test_no_volume_ablation_trains_the_unet_and_freezes_the_volume():
    model = small_model(unet={"depth_attention": False})
    with pytest.raises(ValueError, match="finetune_unet"):
        SyncDreamerSystem(model)
    system = SyncDreamerSystem(model, finetune_unet=True)
    opt = system.configure_optimizers()["optimizer"]
    assert [g["name"] for g in opt.param_groups] == ["unet"]
    assert not any(p.requires_grad for p in model.spatial_volume.parameters())
    assert all(p.requires_grad for p in model.model.diffusion_model.parameters())
    # cc_projection is trained with the UNet (as Zero123 trained it): without depth-wise attention it is the only
    # path from the target view's pose to the UNet, and its view weights start at zero
    unet_group = {id(p) for p in opt.param_groups[0]["params"]}
    assert all(p.requires_grad and id(p) in unet_group for p in model.cc_projection.parameters())
    official = small_model()
    SyncDreamerSystem(official)  # the official recipe: only depth attention and the volume learn
    assert not any(p.requires_grad for p in official.cc_projection.parameters())


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


# ---------------------------------------------------------------------------------------------- proxy recipe knobs
def test_several_target_views_per_sample_average_the_single_view_losses():
    """target_views=K draws K distinct views per sample, and its loss is the mean of the K one-view losses
    (one spatial volume for all of them); K=1 keeps the official draws."""
    model = small_model(randomize_zero_init=True).eval()
    system = SyncDreamerSystem(model, target_views=4)
    batch = fake_image_batch()
    d = system.draw(torch.zeros(2, 16, 4, 8, 8), torch.Generator().manual_seed(0))
    assert d.target_index.shape == (2, 4)
    assert all(len(set(row.tolist())) == 4 for row in d.target_index)
    with torch.no_grad():
        loss, eps = system.compute_loss(batch, draws=d, generator=torch.Generator().manual_seed(3))
        singles = [system.compute_loss(batch, draws=Draws(d.t, d.noise, d.target_index[:, k:k + 1]),
                                       generator=torch.Generator().manual_seed(3))[0] for k in range(4)]
    assert eps.shape == (2, 4, 4, 8, 8)
    torch.testing.assert_close(loss, torch.stack(singles).mean(), atol=1e-5, rtol=1e-5)
    big = SyncDreamerSystem(small_model(), target_views=16).draw(torch.zeros(3, 16, 4, 8, 8))
    assert all(sorted(row.tolist()) == list(range(16)) for row in big.target_index)
    with pytest.raises(ValueError, match="target_views=17"):
        SyncDreamerSystem(small_model(), target_views=17)


def test_truncated_snr_weighting_is_eps_mse_at_high_snr_and_x0_mse_at_low_snr():
    from syncdreamer.diffusion.loss import timestep_weights

    model = small_model(randomize_zero_init=True).eval()
    sa, s1 = model.sqrt_alphas_cumprod, model.sqrt_one_minus_alphas_cumprod
    t = torch.tensor([0, 100, 500, 999])
    assert torch.equal(timestep_weights(t, sa, s1, "eps"), torch.ones(4))
    w = timestep_weights(t, sa, s1, "truncated_snr")
    inv_snr = (s1[t] / sa[t]) ** 2
    assert w[0] == 1 and w[1] == 1  # SNR > 1: plain eps-MSE
    torch.testing.assert_close(w[2:], inv_snr[2:].float())  # SNR < 1: the x0-MSE (eps-MSE / SNR)
    assert 200 < w[3] < 230  # the SD schedule at t = 999
    assert timestep_weights(t, sa, s1, "truncated_snr", max_weight=20.0)[3] == 20.0
    with pytest.raises(ValueError, match="unknown loss weighting"):
        timestep_weights(t, sa, s1, "snr")
    # the weighted loss is the weighted mean of the per-sample eps-MSEs
    batch = fake_image_batch()
    plain, weighted = SyncDreamerSystem(model), SyncDreamerSystem(model, loss_weighting="truncated_snr")
    d = plain.draw(torch.zeros(2, 16, 4, 8, 8), torch.Generator().manual_seed(0))
    d = Draws(torch.tensor([50, 900]), d.noise, d.target_index)
    w = timestep_weights(d.t, sa, s1, "truncated_snr")
    x0, cond = plain.encode_batch(batch, torch.Generator().manual_seed(3))
    lat = {"target_latent": x0, "input_latent": cond.input_latent, "clip_embed": cond.clip_embed,
           "input_elevation": batch["input_elevation"]}
    with torch.no_grad():
        per = [plain.compute_loss({k: v[i:i + 1] for k, v in lat.items()},
                                  draws=Draws(d.t[i:i + 1], d.noise[i:i + 1], d.target_index[i:i + 1]))[0]
               for i in range(2)]
        lw, _ = weighted.compute_loss(lat, draws=d)
    torch.testing.assert_close(lw, (w * torch.stack(per)).mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="loss_weighting"):
        SyncDreamerSystem(model, loss_weighting="x0")


def test_set_scale_factor_changes_the_latent_scale_everywhere_and_keeps_images():
    model = small_model().eval()
    img = fake_image_batch(B=1)["input_image"]
    with torch.no_grad():
        z1 = model.encode_first_stage(img, sample=False)
        out1 = model.decode_first_stage(z1)
        model.set_scale_factor(model.scale_factor * 2)
        z2 = model.encode_first_stage(img, sample=False)
        out2 = model.decode_first_stage(z2)
    assert model.model.scale_factor == model.scale_factor == model.first_stage_model.scale_factor
    torch.testing.assert_close(z2, 2 * z1)
    torch.testing.assert_close(out2, out1, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        model.set_scale_factor(0.0)


def test_v_prediction_returns_eps_and_trains_on_the_v_mse():
    """prediction_type=v: the UNet's output is v = a eps - b x0; the model still returns eps (= a v + b x_t), and
    the system's default loss for it is the v-MSE."""
    from syncdreamer.diffusion.schedule import q_sample

    model = small_model(randomize_zero_init=True, prediction_type="v").eval()
    system = SyncDreamerSystem(model)
    assert system.loss_weighting == "v" and SyncDreamerSystem(small_model()).loss_weighting == "eps"
    batch = fake_image_batch()
    d = system.draw(torch.zeros(2, 16, 4, 8, 8), torch.Generator().manual_seed(0))
    d = Draws(torch.tensor([30, 950]), d.noise, d.target_index)
    with torch.no_grad():
        loss, eps = system.compute_loss(batch, draws=d, generator=torch.Generator().manual_seed(3))
        x0, cond = system.encode_batch(batch, torch.Generator().manual_seed(3))
        cond = model.complete(cond)
        xt = q_sample(x0, d.t, d.noise, model.sqrt_alphas_cumprod, model.sqrt_one_minus_alphas_cumprod)
        t_embed = model.embed_time(d.t)
        frustum, tokens, concat = model.target_view_inputs(model.spatial_volume_for(xt, d.t, cond, t_embed),
                                                           t_embed, cond, d.target_index)
        rows = torch.arange(2)
        v_pred = model.model(xt[rows, d.target_index[:, 0]], d.t, tokens, frustum, concat)
    a = model.sqrt_alphas_cumprod[d.t].view(-1, 1, 1, 1).float()
    b = model.sqrt_one_minus_alphas_cumprod[d.t].view(-1, 1, 1, 1).float()
    x_tgt, n_tgt = x0[rows, d.target_index[:, 0]], d.noise[rows, d.target_index[:, 0]]
    torch.testing.assert_close(eps, a * v_pred + b * xt[rows, d.target_index[:, 0]], atol=1e-5, rtol=1e-5)
    v_true = a * n_tgt - b * x_tgt
    torch.testing.assert_close(loss, (v_pred - v_true).pow(2).mean(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type='x0'"):
        SyncDreamer(prediction_type="x0")
