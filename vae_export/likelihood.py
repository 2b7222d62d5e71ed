"""What the decoder's output means as a probability: the data (binarized or grey-level) and log p(x|z)
with every constant kept, shared by training (binarization) and `vae-export evaluate` (the density).

A Bernoulli likelihood is a normalized distribution only over binary pixels, so grey-level MNIST is
binarized first: `dynamic` draws x_bin ~ Bernoulli(x) afresh at every use (IWAE's protocol), `static`
draws once with a fixed seed per split, so every run and every evaluation sees the same binary dataset.
A Gaussian likelihood N(x; sigmoid(logits), sigma^2) is a density on grey-level pixels as they are.

The calibrated Gaussian (sigma-VAE, Rybkin et al. 2021) sets sigma, per colour channel, to its maximum-
likelihood value, the root mean squared error: reconstruction and KL then balance themselves, where a
fixed sigma lets the KL term drown what little of the squared error colour carries. As 8-bit pixels are
what it models, its figures are probabilities of the 8-bit values (the Gaussian's mass over each pixel's
bin of width 1/255), so its bits/dim compare with published 8-bit results.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import UsageError

BINARIZE = ("none", "dynamic", "static")
STATIC_SEEDS = {"train": 0, "test": 1}   # one fixed draw per split: the same binary dataset everywhere


BINARY_SHARE = 0.8     # auto: grey images with at least this share of pixels within 0.1 of black or white


def choose_likelihood(images: torch.Tensor, binarize: str) -> tuple[str, str]:
    """`--likelihood auto`: (likelihood, why) for the training images (N, C, H, W), uint8 or in [0, 1].
    Bernoulli where pixels are (nearly) binary, as MNIST's are (91% within 0.1 of 0 or 1) or binarized
    on request; the calibrated Gaussian for colour and for grey-level photos."""
    if binarize != "none":
        return "bernoulli", f"--binarize {binarize}"
    if images.shape[1] == 3:
        return "calibrated", "colour images"
    x = images[:2000].float() / (255 if images.dtype == torch.uint8 else 1)
    share = float(((x <= 0.1) | (x >= 0.9)).float().mean())
    if share >= BINARY_SHARE:
        return "bernoulli", f"grey images, {share:.0%} of pixels near black or white"
    return "calibrated", f"grey-level images, {share:.0%} of pixels near black or white"


def check_binarize(mode: str, likelihood: str) -> None:
    if mode not in BINARIZE:
        raise UsageError(f"unknown binarize mode {mode!r}; expected one of {', '.join(BINARIZE)}")
    if mode != "none" and likelihood != "bernoulli":
        raise UsageError(f"--binarize {mode} needs the bernoulli likelihood; a {likelihood} likelihood models "
                         "grey-level pixels")


def bernoulli_draw(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary pixels with P(1) = x: 1 where u < x, u ~ U(0, 1) (IWAE's dynamic binarization)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (u < x).to(x.dtype)


def static_binarized(x: torch.Tensor, split: str) -> torch.Tensor:
    """The split's one fixed binary draw (drawn on the CPU, so it does not depend on the device)."""
    generator = torch.Generator().manual_seed(STATIC_SEEDS[split])
    return bernoulli_draw(x.cpu(), generator).to(x.device)


def describe(likelihood: str, sigma: float, binarize: str) -> str:
    """The likelihood in words, for reports: says when the figure is not a normalized log-density."""
    if likelihood == "gaussian":
        return f"gaussian, sigma={sigma:g} (a density on [0, 1] grey levels)"
    if likelihood == "calibrated":
        return "calibrated gaussian (sigma = the training RMSE per channel), the probability of 8-bit pixel values"
    if binarize == "none":
        return "bernoulli on grey levels (NOT a normalized density: not comparable with binarized-MNIST papers)"
    return f"bernoulli on {binarize}ally binarized pixels"


def log_likelihood(logits: torch.Tensor, x: torch.Tensor, likelihood: str, sigma: float | torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, summed over pixels, all constants kept. logits: (..., C, H, W) pre-sigmoid
    decoder outputs; x broadcasts against them; sigma is a float or, calibrated, (C, 1, 1).
    Returns logits.shape[:-3]."""
    if likelihood == "bernoulli":  # -BCE = x * logits - softplus(logits): two passes, half BCE's time
        return (logits * x).flatten(-3).sum(-1) - F.softplus(logits).flatten(-3).sum(-1)
    if likelihood == "calibrated":
        return discretized_gaussian(torch.sigmoid(logits), x, sigma).flatten(-3).sum(-1)
    z = (x - torch.sigmoid(logits)) / sigma
    return (-0.5 * z * z - math.log(sigma) - 0.5 * math.log(2 * math.pi)).flatten(-3).sum(-1)


BIN = 1 / 255                     # 8-bit pixels k/255: the bin of each value is k/255 +- BIN/2
SIGMA_FLOOR = math.exp(-6)        # the calibrated sigma's floor (Rybkin et al.'s softclip bound): 0.0025


def calibrated_sigma(mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The maximum-likelihood sigma of N(x; mean, sigma^2) per channel: the root mean squared error
    over batch and pixels, floored. mean, x: (B, C, H, W); returns (C, 1, 1), without gradient (at
    the optimum the loss's derivative in sigma is zero, so none is lost)."""
    mse = (mean.detach().float() - x).pow(2).mean((0, 2, 3))
    return mse.sqrt().clamp(min=SIGMA_FLOOR)[:, None, None]


def gaussian_8bit_nll(mean: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """-log p(x) summed over all elements, for training: the Gaussian density times the bin width,
    the 8-bit value's probability to within a fraction of a percent once sigma spans a few levels."""
    z = (x - mean) / sigma
    return (0.5 * z * z + torch.log(sigma) + 0.5 * math.log(2 * math.pi) - math.log(BIN)).sum()


def discretized_gaussian(mean: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """log P(8-bit value of x) under N(mean, sigma^2), elementwise: the mass over x's bin, with the
    bins of 0 and 1 reaching to -inf and +inf (as PixelCNN++'s discretized logistic)."""
    normal = torch.distributions.Normal(mean, sigma)
    upper = torch.where(x > 1 - BIN / 2, torch.ones_like(mean), normal.cdf(x + BIN / 2))
    lower = torch.where(x < BIN / 2, torch.zeros_like(mean), normal.cdf(x - BIN / 2))
    mass = upper - lower
    # far in a tail the difference of CDFs rounds to 0: there the density times the bin is exact enough
    return torch.where(mass > 1e-6, torch.log(mass.clamp(min=1e-12)), normal.log_prob(x) + math.log(BIN))


def log_normal(z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last axis, with the 2*pi normalizer."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    d = (z - mu) ** 2 * torch.exp(-logvar)
    return -0.5 * (d + logvar + math.log(2 * math.pi)).sum(-1)
