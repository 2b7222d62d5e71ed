import math

import numpy as np
import pytest
import torch

from vae_export.config import PRESETS, VAEConfig, make_config
from vae_export.errors import UsageError
from vae_export.model import VAE, elbo_terms


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_has_the_promised_shapes(preset):
    config = make_config(preset)
    vae = VAE(config).eval()
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = vae.encoder(x)
    assert mu.shape == logvar.shape == (5, config.latent_dim)
    images = vae.decoder(torch.randn(5, config.latent_dim))
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    logits, mu2, _ = vae(x)
    assert logits.shape == (5, 1, 28, 28) and torch.equal(mu, mu2)


def test_presets_reproduce_the_tutorial_architectures():
    def widths(module):
        return [m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear)]

    mlp = VAE(make_config("mlp"))
    assert widths(mlp.encoder) == [400, 20, 20] and widths(mlp.decoder) == [400, 784]
    deep = VAE(make_config("mlp-deep"))
    assert widths(deep.encoder) == [256, 64, 10, 10] and widths(deep.decoder) == [64, 256, 784]
    assert make_config("mlp-deep").likelihood == "gaussian"
    assert widths(VAE(make_config("mlp-small")).encoder) == [256, 20, 20]
    conv = VAE(make_config("conv"))
    convs = [m.out_channels for m in conv.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [16, 32, 32] and widths(conv.encoder) == [32, 2, 2]


def test_overrides_and_refusals():
    assert make_config("mlp", latent_dim=2, beta=0.5).latent_dim == 2
    with pytest.raises(UsageError):
        make_config("nope")
    with pytest.raises(UsageError):
        make_config("mlp", likelihood="poisson")
    config = make_config("conv", beta=2.0)
    assert VAEConfig.from_dict(config.to_dict()) == config


def test_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1, 28, 28))
    x = rng.uniform(size=(3, 1, 28, 28))
    mu, logvar = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)) * 0.3
    p = 1 / (1 + np.exp(-logits))
    bce = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
    sse = np.sum((p - x) ** 2)
    kl = -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar))
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    recon, kl_t = elbo_terms(t(logits), t(x), t(mu), t(logvar), "bernoulli")
    assert math.isclose(recon.item(), bce, rel_tol=1e-12) and math.isclose(kl_t.item(), kl, rel_tol=1e-12)
    recon, _ = elbo_terms(t(logits), t(x), t(mu), t(logvar), "gaussian")
    assert math.isclose(recon.item(), sse, rel_tol=1e-12)
