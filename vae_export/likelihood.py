"""What the decoder's output means as a probability: the data (binarized or grey-level) and log p(x|z)
with every constant kept, shared by training (binarization) and `vae-export evaluate` (the density).

A Bernoulli likelihood is a normalized distribution only over binary pixels, so grey-level MNIST is
binarized first: `dynamic` draws x_bin ~ Bernoulli(x) afresh at every use (IWAE's protocol), `static`
draws once with a fixed seed per split, so every run and every evaluation sees the same binary dataset.
A Gaussian likelihood N(x; sigmoid(logits), sigma^2) is a density on grey-level pixels as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import UsageError

BINARIZE = ("none", "dynamic", "static")
STATIC_SEEDS = {"train": 0, "test": 1}   # one fixed draw per split: the same binary dataset everywhere


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
    if binarize == "none":
        return "bernoulli on grey levels (NOT a normalized density: not comparable with binarized-MNIST papers)"
    return f"bernoulli on {binarize}ally binarized pixels"


def log_likelihood(logits: torch.Tensor, x: torch.Tensor, likelihood: str, sigma: float) -> torch.Tensor:
    """log p(x|z) per image, summed over pixels, all constants kept. logits: (..., C, H, W) pre-sigmoid
    decoder outputs; x broadcasts against them. Returns logits.shape[:-3]."""
    if likelihood == "bernoulli":  # -BCE = x * logits - softplus(logits): two passes, half BCE's time
        return (logits * x).flatten(-3).sum(-1) - F.softplus(logits).flatten(-3).sum(-1)
    z = (x - torch.sigmoid(logits)) / sigma
    return (-0.5 * z * z - math.log(sigma) - 0.5 * math.log(2 * math.pi)).flatten(-3).sum(-1)


def log_normal(z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last axis, with the 2*pi normalizer."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    d = (z - mu) ** 2 * torch.exp(-logvar)
    return -0.5 * (d + logvar + math.log(2 * math.pi)).sum(-1)
