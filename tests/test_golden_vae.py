"""The VAE reproduces the official KL autoencoder outputs stored in golden/vae_* (built from the manifest)."""
import pytest
import torch

from golden_utils import Golden, assert_close, fixture_params
from syncdreamer.models.vae import OFFICIAL_VAE_PREFIX, KLAutoencoder

# manifest output name -> tolerance group of tolerance_hint.suggested
_GROUPS = {
    "moments": "moments_mean_logvar_latents",
    "posterior_mean": "moments_mean_logvar_latents",
    "posterior_logvar": "moments_mean_logvar_latents",
    "posterior_std": "moments_mean_logvar_latents",
    "latent_scaled_sample": "moments_mean_logvar_latents",
    "latent_scaled_mode": "moments_mean_logvar_latents",
    "decoded_from_mean": "decoded_from_mean",
}


@pytest.mark.parametrize("fixture", fixture_params("vae"))
def test_vae_matches_official(fixture):
    g = Golden(fixture)
    cfg = g.config
    model = KLAutoencoder.from_ddconfig(cfg["ddconfig"], embed_dim=cfg["embed_dim"],
                                        scale_factor=cfg["scale_factor"]).eval()
    sd = {k[len(OFFICIAL_VAE_PREFIX):]: v for k, v in g.weights.items() if k.startswith(OFFICIAL_VAE_PREFIX)}
    assert len(sd) == g.manifest["weights"]["num_keys"]
    missing, unexpected = model.load_official_state_dict(sd, strict=True)
    assert missing == [] and unexpected == []
    assert sum(p.numel() for p in model.parameters()) == g.manifest["weights"]["num_numbers"]

    x, noise = g.tensors["input_image"], g.tensors["posterior_noise"]
    with torch.no_grad():
        mean, logvar, std = model.posterior(x)
        got = {
            "moments": model.moments(x),
            "posterior_mean": mean,
            "posterior_logvar": logvar,
            "posterior_std": std,
            "decoded_from_mean": model.decode(mean * model.scale_factor),
            "latent_scaled_sample": model.encode(x, sample=True, noise=noise),
            "latent_scaled_mode": model.encode(x, sample=False),
        }
    outputs = g.outputs()
    assert set(outputs) <= set(got), f"outputs not checked: {set(outputs) - set(got)}"
    for name in outputs:
        assert_close(got[name], g.tensors[name], name=name, **g.tol(_GROUPS[name]))
