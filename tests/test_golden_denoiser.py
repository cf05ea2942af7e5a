"""The denoiser reproduces the official code's tensors (golden fixtures of kind ``denoiser``)."""
import math

import pytest
import torch

from golden_utils import Golden, assert_close, denoiser_kwargs, fixture_params
from syncdreamer.diffusion.loss import training_loss
from syncdreamer.diffusion.sampler import SyncDDIMSampler
from syncdreamer.diffusion.schedule import make_betas, schedule_buffers
from syncdreamer.models import Condition, SyncDreamer


@pytest.fixture(scope="module", params=fixture_params("denoiser"))
def golden(request):
    g = Golden(request.param)
    torch.manual_seed(0)
    model = SyncDreamer(**denoiser_kwargs(g.config)).eval()
    model.load_state_dict(g.weights, strict=True)
    g.model = model
    T = g.tensors
    g.cond = model.complete(Condition(T["input_latent_scaled"], T["clip_embed_raw"], T["elevation_rad"]))
    return g


def tol(g, name):
    if name.startswith("ddim_x"):
        return g.tol("ddim_latents")
    if name == "train_loss":
        return g.tol("train_loss")
    return g.tol("eps_and_intermediates")


def check(g, name, actual):
    if name not in g.tensors:
        pytest.fail(f"{name} is not in the fixture")
    t = tol(g, name)
    assert_close(actual, g.tensors[name], t["atol"], t["rtol"], name)


def test_state_dict_matches_fixture_keys(golden):
    sd = golden.model.state_dict()
    assert set(sd) == set(golden.weights)
    assert all(sd[k].shape == golden.weights[k].shape for k in sd)


def test_schedule_and_camera_buffers_are_recomputed_exactly(golden):
    cfg = golden.config["schedule"]
    assert cfg["T"] == 1000 and cfg["parameterization"] == "eps"
    ours = schedule_buffers(make_betas(cfg["T"]))
    for name, value in ours.items():
        assert_close(value, golden.weights[name], 1e-6, 1e-5, name)
    fresh = SyncDreamer(**denoiser_kwargs(golden.config))  # buffers from our own rig, not from the file
    for name in ("poses", "Ks", "azimuth"):
        assert_close(getattr(fresh, name), golden.weights[name], 1e-6, 0, name)


def test_view_embedding_and_clip_tokens(golden):
    assert_close(golden.cond.view_embed, golden.tensors["view_embedding"], 1e-6, 0, "view_embedding")
    check(golden, "clip_tokens_projected", golden.cond.clip_tokens)
    assert golden.config["elevation_deg"] == pytest.approx(math.degrees(golden.tensors["elevation_rad"].item()), abs=1e-4)


def _case_names(g):
    return [(i, c["name"]) for i, c in enumerate(g.config["cases"])]


def test_volume_time_embedding_spatial_volume_and_frustum(golden):
    g, m, T = golden, golden.model, golden.tensors
    with torch.no_grad():
        for i, name in _case_names(g):
            t = T["timesteps"][i:i + 1]
            assert int(t) == g.config["cases"][i]["t"]
            te = m.embed_time(t)
            if f"{name}_volume_time_embedding" in T:
                check(g, f"{name}_volume_time_embedding", te)
            if f"{name}_spatial_volume" in T:
                vol = m.spatial_volume_for(T["x_t"], t, g.cond, te)
                check(g, f"{name}_spatial_volume", vol)
                frustum_keys = [k for k in T if k.startswith(f"{name}_frustum_views")]
                for key in frustum_keys:
                    views = [int(v) for v in key.split("views")[1].split("_")[0].split("and")]
                    width = int(key.rsplit("_w", 1)[1])
                    fr = m.spatial_volume.construct_view_frustum_volume(vol, te, g.cond.view_embed, m.poses, m.Ks,
                                                                        torch.tensor([views]))
                    check(g, key, fr[width])


def test_noise_predictions_cond_uncond_cfg(golden):
    g, m, T = golden, golden.model, golden.tensors
    scale = g.config["cfg"]["scale"]
    chunk = g.config["sampler"]["batch_view_num"]
    N = g.config["view_num"]
    with torch.no_grad():
        for i, name in _case_names(g):
            t = T["timesteps"][i:i + 1]
            eps_c = m.predict_eps(T["x_t"], t, g.cond, 1.0, chunk)
            check(g, f"{name}_eps_cond", eps_c)
            # unconditional branch: zero projected CLIP token, zero frustum features, zero concat latent
            te = m.embed_time(t)
            vol = m.spatial_volume_for(T["x_t"], t, g.cond, te)
            idx = torch.arange(N).unsqueeze(0)
            frustum, tokens, concat = m.target_view_inputs(vol, te, g.cond, idx)
            eps_u = m.model(T["x_t"][0], t.repeat(N), torch.zeros_like(tokens),
                            {k: torch.zeros_like(v) for k, v in frustum.items()}, torch.zeros_like(concat))
            check(g, f"{name}_eps_uncond", eps_u)
            check(g, f"{name}_eps_cfg", eps_u + scale * (eps_c - eps_u.reshape(eps_c.shape)).reshape(eps_u.shape))


def test_ddim_sampler(golden):
    g, m, T = golden, golden.model, golden.tensors
    sc = g.config["sampler"]
    assert sc["discretize"] == "uniform"
    sampler = SyncDDIMSampler(m, steps=sc["steps"], eta=sc["eta"], cfg_scale=sc["cfg_scale"],
                              batch_view_num=sc["batch_view_num"])
    assert sampler.timesteps.tolist() == T["ddim_timesteps"].tolist() == sc["timesteps"]
    assert_close(sampler.alphas, T["ddim_alphas"], 1e-7, 0, "ddim_alphas")
    assert_close(sampler.alphas_prev, T["ddim_alphas_prev"], 1e-7, 0, "ddim_alphas_prev")
    seen = {}
    sampler_out = sampler.sample(g.cond, x_T=T["ddim_x_T"], callback=lambda i, n, x: seen.__setitem__(i + 1, x.clone()))
    for key in T:
        if key.startswith("ddim_x_after_step"):
            check(g, key, seen[int(key.rsplit("step", 1)[1])])
    check(g, "ddim_x_0", sampler_out)


def test_training_loss(golden):
    g, m, T = golden, golden.model, golden.tensors
    tc = g.config["training"]
    assert int(T["train_t"]) == tc["t"] and int(T["train_target_index"]) == tc["target_index"]
    with torch.no_grad():
        loss, eps = training_loss(m, T["train_x0"], g.cond, T["train_t"], T["train_noise"], T["train_target_index"])
    check(g, "train_eps_pred_target_view", eps)
    check(g, "train_loss", loss.reshape(1))
