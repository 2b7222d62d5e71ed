"""The VAE family: an Encoder (image -> mu, logvar) and a Decoder (latent -> image in [0, 1]),
separate modules so each exports alone, composed by `VAE` with the reparameterization trick.

    from vae_export.config import make_config
    vae = VAE(make_config("mlp"))
    logits, mu, logvar = vae(x)          # x: (B, C, H, W) in [0, 1], the config's image_shape
    recon, kl = elbo_terms(logits, x, mu, logvar, "bernoulli")
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .config import VAEConfig
from .likelihood import gaussian_8bit_nll


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def _conv_block(conv: nn.Module, n_out: int, config: VAEConfig) -> list[nn.Module]:
    """conv -> [BatchNorm] -> activation. BatchNorm keeps every layer's activations at unit scale, which
    lets the small colour differences between channels through a deep stack (see docs: colour)."""
    norm = [nn.BatchNorm2d(n_out)] if config.norm == "batch" else []
    return [conv, *norm, ACTIVATIONS[config.activation]()]


def folded(module: nn.Module) -> nn.Module:
    """A copy of `module` in eval mode with every BatchNorm that follows a convolution folded into it
    (`torch.nn.utils.fusion`): the exported graphs have no BatchNormalization node, and the copy
    computes what the eval-mode module does."""
    module = copy.deepcopy(module).eval()
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                seq[i + 1] = nn.Identity()
    return module


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Image (B, C, H, W) -> (mu, logvar), each (B, latent_dim). Deterministic: no sampling inside."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c = config.image_shape[0]
        if config.arch == "mlp":
            self.body = nn.Sequential(nn.Flatten(), _mlp([config.pixels, *config.hidden]), nn.ReLU())
        else:
            layers: list[nn.Module] = []
            for n_in, n_out, stride in zip((c, *config.channels), config.channels, config.conv_strides):
                layers += _conv_block(nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1), n_out, config)  # H, W halve if stride 2
            gh, gw = config.conv_grid
            if config.latent_channels:  # mu and logvar: a 1x1 conv per cell, flattened to (B, latent_dim)
                self.body = nn.Sequential(*layers)                        # (B, c_last, gh, gw)
                self.mu, self.logvar = (nn.Sequential(nn.Conv2d(config.channels[-1], config.latent_channels, 1), nn.Flatten())
                                        for _ in range(2))
                return
            self.body = nn.Sequential(
                *layers,                                                  # (B, c_last, gh, gw)
                nn.Flatten(),                                             # (B, c_last * gh * gw)
                nn.Linear(config.channels[-1] * gh * gw, config.hidden[0]), ACTIVATIONS[config.activation](),
            )
        self.mu = nn.Linear(config.hidden[-1], config.latent_dim)
        self.logvar = nn.Linear(config.hidden[-1], config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """Latent (B, latent_dim) -> image (B, C, H, W) in [0, 1]. `logits` is the pre-sigmoid output,
    which training uses for a numerically stable BCE."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c = config.image_shape[0]
        if config.arch == "mlp":
            self.body = _mlp([config.latent_dim, *reversed(config.hidden), config.pixels])
        else:
            # one transposed conv undoes each stride-2 encoder layer, with that layer's width, in reverse
            gh, gw, width = *config.conv_grid, config.channels[-1]
            if config.latent_channels:   # the latent is already a grid: a 3x3 conv widens it
                layers = [nn.Unflatten(1, (config.latent_channels, gh, gw)),
                          *_conv_block(nn.Conv2d(config.latent_channels, width, 3, padding=1), width, config)]
            else:
                layers = [nn.Linear(config.latent_dim, width * gh * gw), ACTIVATIONS[config.activation](),
                          nn.Unflatten(1, (width, gh, gw))]                                    # (B, c_last, gh, gw)
            downs = [n for n, s in zip(config.channels, config.conv_strides) if s == 2]
            for n_out in reversed(downs):
                layers += _conv_block(nn.ConvTranspose2d(width, n_out, 3, stride=2, padding=1, output_padding=1), n_out, config)
                width = n_out                                                                  # H, W double
            self.body = nn.Sequential(*layers, nn.Conv2d(width, c, 3, padding=1))              # (B, C, H, W)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).view(-1, *self.config.image_shape)  # (B, C*H*W) -> (B, C, H, W) for MLPs

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a sample that gradients flow through."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Returns decoder logits (B, C, H, W), mu and logvar (B, latent_dim)."""
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decoder.logits(z), mu, logvar


def pixel_sigma(config: VAEConfig) -> float | torch.Tensor:
    """The likelihood's sigma for evaluation: the fixed one, or the calibrated one per channel, (C, 1, 1)."""
    if config.likelihood != "calibrated":
        return config.sigma
    return torch.tensor(config.channel_sigma or (config.sigma,) * config.image_shape[0])[:, None, None]


def elbo_terms(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               likelihood: str, sigma: float | torch.Tensor = 0.5 ** 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction and KL terms, each summed over the batch (divide by B for nats per image).

    bernoulli: binary cross-entropy of sigmoid(logits) against x, summed over pixels (pytorch/examples).
    gaussian:  squared error of sigmoid(logits) against x, summed over pixels, over 2 * sigma^2: the
               Gaussian NLL without its constant (sigma = sqrt(1/2), the default, is the MSE tutorials' loss).
               `vae_export.likelihood.log_likelihood` keeps the constant, for `vae-export evaluate`.
    calibrated: -log p of the 8-bit pixels under N(sigmoid(logits), sigma^2), sigma (C, 1, 1) per channel:
               in training the batch's own optimum (`calibrated_sigma`), in evaluation the training set's.
    KL(q(z|x) || N(0, I)) = -0.5 * sum(1 + logvar - mu^2 - exp(logvar))  (Kingma & Welling, App. B).
    """
    if likelihood == "bernoulli":
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    elif likelihood == "calibrated":
        recon = gaussian_8bit_nll(torch.sigmoid(logits), x, sigma)
    elif likelihood == "gaussian":
        recon = F.mse_loss(torch.sigmoid(logits), x, reduction="sum") / (2 * sigma**2)
    else:  # "auto" is resolved from the data when training starts (training.train); never a loss itself
        raise ValueError(f"likelihood {likelihood!r} has no loss; expected bernoulli, gaussian or calibrated")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return recon, kl
