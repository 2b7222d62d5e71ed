"""The pictures users look at first: reconstruction and sample grids, loss curves, 2-D manifolds.
Each is written atomically."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from vae_export.files import atomic_path
from vae_export.latents import manifold_latents


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> None:
    """(B, C, H, W) in [0, 1] -> one PNG grid."""
    with atomic_path(path) as tmp:
        save_image(images.detach().float().cpu(), tmp, nrow=nrow, padding=padding, format="png")


def save_reconstruction(x: torch.Tensor, recon: torch.Tensor, path: str | Path) -> None:
    """Top row originals, bottom row reconstructions (pytorch/examples' comparison image)."""
    save_grid(torch.cat([x, recon]), path, nrow=len(x))


@torch.no_grad()
def save_manifold(decoder: torch.nn.Module, path: str | Path, n: int = 30) -> None:
    """Decode an n x n grid over the Gaussian quantiles of a 2-D latent into one image."""
    device = next(decoder.parameters()).device
    z = torch.from_numpy(manifold_latents(n)).to(device)          # (n*n, 2)
    save_grid(decoder(z), path, nrow=n, padding=0)


def save_loss_curve(metrics: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    ax.plot(epochs, [m["test_loss"] for m in metrics], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
