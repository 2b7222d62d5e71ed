"""Latent grids shared by training plots, the sampler and the CLI. numpy + stdlib only."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def manifold_latents(n: int = 30, lo: float = 0.01, hi: float = 0.99) -> np.ndarray:
    """(n*n, 2) latents on the Gaussian quantiles lo..hi, row-major with z2 decreasing downwards,
    so the decoded grid reads like a plot (the classic 2-D latent manifold figure)."""
    q = np.array([NormalDist().inv_cdf(p) for p in np.linspace(lo, hi, n)], dtype=np.float32)
    z1, z2 = np.meshgrid(q, q[::-1])                                # (n, n) each
    return np.stack([z1.ravel(), z2.ravel()], axis=1)               # (n*n, 2)


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """(steps, D) points on the straight line from z0 to z1, both ends included."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return ((1 - t) * z0[None] + t * z1[None]).astype(np.float32)
