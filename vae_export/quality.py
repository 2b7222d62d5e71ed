"""What a reduced-precision decoder costs in the unit users compare models by: the test-set loss in
nats/image (pytorch/examples' `Test set loss`), with the eager encoder and an exported decoder.

    from vae_export.quality import decoder_test_loss
    decoder_test_loss(model, "runs/mlp/export/decoder.int8.onnx", images)["test_loss"]

Every variant sees the same latents (the eager encoder's, reparameterized with fixed noise), so the
difference between two variants' losses is the decoder's doing alone. The reconstruction term is
computed from the decoder's [0, 1] output rather than from logits, for fp32 as for the others, so
the comparison is like for like; it matches training's logit-based figure to about 0.01 nats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .likelihood import gaussian_8bit_nll
from .model import VAE, pixel_sigma
from .runtime import Decoder

PROB_FLOOR = 1e-7     # float32's sigmoid reaches exactly 0 or 1: keep log() finite (cost < 1e-6 nats/pixel)


def decoder_test_loss(model: VAE, decoder: str | Path | Decoder, images: np.ndarray, *, seed: int = 1,
                      batch_size: int = 2000) -> dict[str, float]:
    """Mean test loss, reconstruction and KL per image (nats) of `images` (N, C, H, W) in [0, 1]."""
    decoder = decoder if isinstance(decoder, Decoder) else Decoder(decoder)
    rng = torch.Generator().manual_seed(seed)
    recon_sum = kl_sum = 0.0
    for x in torch.from_numpy(np.ascontiguousarray(images, np.float32)).split(batch_size):
        with torch.inference_mode():
            mu, logvar = model.encoder(x)
            z = model.reparameterize(mu, logvar, rng)
        p = decoder.decode(z.numpy()).astype(np.float64)
        target = x.numpy().astype(np.float64)
        if model.config.likelihood == "bernoulli":
            p = np.clip(p, PROB_FLOOR, 1 - PROB_FLOOR)
            recon_sum += float(-(target * np.log(p) + (1 - target) * np.log1p(-p)).sum())
        elif model.config.likelihood == "calibrated":
            recon_sum += float(gaussian_8bit_nll(torch.from_numpy(p), x.double(), pixel_sigma(model.config).double()))
        else:
            recon_sum += float(((p - target) ** 2).sum())
        kl_sum += float(-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()))
    n = len(images)
    return {"test_loss": (recon_sum + model.config.beta * kl_sum) / n, "test_recon": recon_sum / n,
            "test_kl": kl_sum / n}


def variant_costs(model: VAE, folder: str | Path, images: np.ndarray, variants=("fp16", "int8")) -> dict[str, float]:
    """Extra test loss (nats/image) of each variant present in `folder` over its decoder.onnx."""
    base = decoder_test_loss(model, Path(folder) / "decoder.onnx", images)["test_loss"]
    return {v: decoder_test_loss(model, Path(folder) / f"decoder.{v}.onnx", images)["test_loss"] - base
            for v in variants if (Path(folder) / f"decoder.{v}.onnx").is_file()}
