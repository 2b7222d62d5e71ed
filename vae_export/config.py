"""The architecture as one typed dataclass, saved inside every checkpoint so a checkpoint alone
rebuilds its model. Presets reproduce the classic MNIST tutorials' VAEs, plus `conv-large` for bigger
colour images; training sets `image_shape` from the data, so every preset takes any (C, H, W).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

ARCHS = ("mlp", "conv")
LIKELIHOODS = ("auto", "bernoulli", "gaussian", "calibrated")   # auto: chosen from the data when training starts
NORMS = ("none", "batch")
ACTIVATIONS = ("relu", "silu", "leaky_relu")


@dataclass(frozen=True)
class VAEConfig:
    preset: str = "mlp"
    arch: str = "mlp"                              # "mlp" or "conv"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    hidden: tuple[int, ...] = (400,)               # MLP hidden widths; conv: width of the fc layer
    channels: tuple[int, ...] = ()                 # conv only: encoder conv widths, one 3x3 layer each
    strides: tuple[int, ...] = ()                  # conv only: each layer's stride, 1 or 2; () = derived (see conv_strides)
    latent_dim: int = 20
    likelihood: str = "bernoulli"                  # "bernoulli" (BCE), "gaussian" (MSE), "calibrated" (sigma-VAE), "auto"
    beta: float = 1.0                              # KL weight
    sigma: float = 0.5 ** 0.5                      # gaussian: the fixed pixel std (sqrt(1/2): MSE sum = NLL + const)
    channel_sigma: tuple[float, ...] = ()          # calibrated: the training set's RMSE per channel (set by training)
    norm: str = "none"                             # conv only: "batch" = BatchNorm after each conv (folded at export)
    activation: str = "relu"                       # conv only: "relu", "silu" or "leaky_relu" (slope 0.2)
    latent_channels: int = 0                       # conv only: > 0 = a latent on the last conv grid, this many channels
                                                   # per cell (latent_dim = that times gh * gw, no fc layers); 0 = flat

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UsageError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.likelihood not in LIKELIHOODS:
            raise UsageError(f"unknown likelihood {self.likelihood!r}; expected one of {', '.join(LIKELIHOODS)}")
        if self.norm not in NORMS or self.activation not in ACTIVATIONS:
            raise UsageError(f"norm must be one of {', '.join(NORMS)} and activation one of {', '.join(ACTIVATIONS)}")
        if self.latent_dim < 1 or any(h < 1 for h in self.hidden + self.channels):
            raise UsageError("latent_dim and every hidden/channel width must be >= 1")
        if not self.beta >= 0:
            raise UsageError(f"beta must be >= 0, got {self.beta}")
        if not self.sigma > 0:
            raise UsageError(f"sigma must be > 0, got {self.sigma}")
        c, h, w = self.image_shape
        if c not in (1, 3) or h < 1 or w < 1:
            raise UsageError(f"image_shape must be (1 or 3 channels, height, width), got {self.image_shape}")
        if self.arch == "conv":
            self._check_conv()
        elif self.latent_channels:
            raise UsageError(f"{self.preset}: latent_channels applies to conv presets")

    def _check_conv(self) -> None:
        _, h, w = self.image_shape
        if not self.channels or (len(self.hidden) != 1 and not self.latent_channels) or self.latent_channels < 0:
            raise UsageError(f"{self.preset}: conv needs at least 1 channel width and exactly 1 hidden width "
                             "(or latent_channels > 0)")
        if self.strides and (len(self.strides) != len(self.channels) or set(self.strides) - {1, 2}):
            raise UsageError(f"{self.preset}: strides must be 1 or 2, one per channel width, got {self.strides}")
        factor = 2 ** self.conv_strides.count(2)
        if factor == 1 or h % factor or w % factor:
            raise UsageError(f"{self.preset}: a {h}x{w} image does not fit this conv network (height and width must "
                             f"be divisible by {max(factor, 2)}); pick another --image-size")
        if self.latent_channels:  # the latent's size follows from the grid, so it follows the image's size
            gh, gw = self.conv_grid
            object.__setattr__(self, "latent_dim", self.latent_channels * gh * gw)

    @property
    def conv_strides(self) -> tuple[int, ...]:
        """The conv layers' strides: as given, or derived from the image size: stride 2 in as many leading
        layers as halve the height and width exactly while the smaller side stays >= 4 (64x64 with 4
        layers: 2, 2, 2, 2 down to 4x4; 28x28: 2, 2, 1, 1 down to 7x7), or >= 8 for a latent on the grid
        (32x32: 2, 2, 1, 1 down to 8x8; 64x64: 2, 2, 2, 1): a cell then describes a patch small enough
        for its few channels to keep the edges and colours in it."""
        if self.strides:
            return self.strides
        _, h, w = self.image_shape
        k, smallest = 0, 8 if self.latent_channels and min(h, w) >= 16 else 4
        while (k < len(self.channels) and h % 2 ** (k + 1) == 0 and w % 2 ** (k + 1) == 0
               and min(h, w) // 2 ** (k + 1) >= smallest):
            k += 1
        return (2,) * k + (1,) * (len(self.channels) - k)

    @property
    def conv_grid(self) -> tuple[int, int]:
        """(H, W) of the last conv layer's output, which the fc layer flattens."""
        factor = 2 ** self.conv_strides.count(2)
        return self.image_shape[1] // factor, self.image_shape[2] // factor

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
    # pytorch/examples vae/main.py (auto: bernoulli on MNIST-like images, calibrated on photos)
    "mlp": VAEConfig("mlp", "mlp", hidden=(400,), latent_dim=20, likelihood="auto"),
    "mlp-small": VAEConfig("mlp-small", "mlp", hidden=(256,), latent_dim=20, likelihood="auto"),
    # the deeper MLP tutorials: 784-256-64-10, Gaussian likelihood (summed squared error)
    "mlp-deep": VAEConfig("mlp-deep", "mlp", hidden=(256, 64), latent_dim=10, likelihood="gaussian"),
    # the convolutional VAE with a 2-D latent (Keras / Pyro tutorials), plotted as a manifold
    "conv": VAEConfig("conv", "conv", hidden=(32,), channels=(16, 32, 32), strides=(1, 2, 1), latent_dim=2,
                      likelihood="auto"),
    # colour images (32x32, 64x64): four conv layers, stride 2 down to an 8x8 grid, BatchNorm (folded at
    # export) and SiLU, and the latent on that grid, 8 channels per cell (8x8x8 = 512-D): through an fc
    # bottleneck the same network stalls at a blurry, greyish 17 dB for thousands of steps (docs: colour);
    # --latent-channels 0 gives that flat design back, with a 64-D latent (FLAT_LATENT_DIM)
    "conv-large": VAEConfig("conv-large", "conv", hidden=(256,), channels=(16, 32, 64, 128), latent_channels=8,
                            likelihood="auto", norm="batch", activation="silu"),
}


FLAT_LATENT_DIM = 64   # a grid preset's latent with --latent-channels 0 (conv-large's before issue 18)

# training settings of a preset where they differ from the tutorials' constant Adam at 1e-3 (issue 18:
# one-cycle to 3e-3 gave conv-large +0.5 dB on colour data in the same steps; docs/training.md)
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {"conv-large": {"lr": 3e-3, "lr_schedule": "onecycle"}}


def make_config(preset: str, **overrides: Any) -> VAEConfig:
    """The named preset with any non-None overrides applied (e.g. latent_dim=2, beta=0.5)."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("latent_channels") == 0 and PRESETS[preset].latent_channels:   # back to the flat design
        changes.setdefault("latent_dim", FLAT_LATENT_DIM)
    return dataclasses.replace(PRESETS[preset], **changes)
