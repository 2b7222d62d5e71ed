"""The architecture as one typed dataclass, saved inside every checkpoint so a checkpoint alone
rebuilds its model. Presets reproduce the classic MNIST tutorials' VAEs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

ARCHS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class VAEConfig:
    preset: str = "mlp"
    arch: str = "mlp"                              # "mlp" or "conv"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    hidden: tuple[int, ...] = (400,)               # MLP hidden widths; conv: width of the fc layer
    channels: tuple[int, ...] = ()                 # conv only: encoder conv widths
    latent_dim: int = 20
    likelihood: str = "bernoulli"                  # "bernoulli" (BCE) or "gaussian" (MSE)
    beta: float = 1.0                              # KL weight
    sigma: float = 0.5 ** 0.5                      # gaussian: the fixed pixel std (sqrt(1/2): MSE sum = NLL + const)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UsageError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.likelihood not in LIKELIHOODS:
            raise UsageError(f"unknown likelihood {self.likelihood!r}; expected one of {', '.join(LIKELIHOODS)}")
        if self.latent_dim < 1 or any(h < 1 for h in self.hidden + self.channels):
            raise UsageError("latent_dim and every hidden/channel width must be >= 1")
        if not self.beta >= 0:
            raise UsageError(f"beta must be >= 0, got {self.beta}")
        if not self.sigma > 0:
            raise UsageError(f"sigma must be > 0, got {self.sigma}")
        if self.arch == "conv" and (len(self.channels) != 3 or len(self.hidden) != 1):
            raise UsageError("conv needs exactly 3 channel widths and 1 hidden width")
        if self.arch == "conv" and (self.image_shape[1] % 2 or self.image_shape[2] % 2):
            raise UsageError("conv needs an even image height and width")

    @property
    def pixels(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tuples})


PRESETS: dict[str, VAEConfig] = {
    # pytorch/examples vae/main.py
    "mlp": VAEConfig("mlp", "mlp", hidden=(400,), latent_dim=20, likelihood="bernoulli"),
    "mlp-small": VAEConfig("mlp-small", "mlp", hidden=(256,), latent_dim=20, likelihood="bernoulli"),
    # the deeper MLP tutorials: 784-256-64-10, Gaussian likelihood (summed squared error)
    "mlp-deep": VAEConfig("mlp-deep", "mlp", hidden=(256, 64), latent_dim=10, likelihood="gaussian"),
    # the convolutional VAE with a 2-D latent (Keras / Pyro tutorials), plotted as a manifold
    "conv": VAEConfig("conv", "conv", hidden=(32,), channels=(16, 32, 32), latent_dim=2, likelihood="bernoulli"),
}


def make_config(preset: str, **overrides: Any) -> VAEConfig:
    """The named preset with any non-None overrides applied (e.g. latent_dim=2, beta=0.5)."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[preset], **changes)
