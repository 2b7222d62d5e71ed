"""Shared fixtures: the real MNIST (from $VAE_EXPORT_DATA or ../shared/data) and small trained runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VAE_EXPORT_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The MNIST root. In CI the data is always there, so its absence fails loudly; elsewhere we skip."""
    raw = DATA / "MNIST" / "raw"
    if not any(raw.glob("train-images-idx3-ubyte*")):
        message = f"MNIST not found in {raw} (set VAE_EXPORT_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return DATA


@pytest.fixture(scope="session")
def trained(mnist_root, tmp_path_factory):
    """trained(preset) -> Path of a checkpoint from a real, short run on a slice of MNIST (cached)."""
    from vae_export.training.train import TrainSettings, train
    from vae_export.config import make_config

    cache: dict[str, Path] = {}

    def get(preset: str = "mlp") -> Path:
        if preset not in cache:
            out = tmp_path_factory.mktemp(f"run-{preset}")
            train(make_config(preset), TrainSettings(epochs=1, limit=1000, seed=0), out, data_dir=mnist_root)
            cache[preset] = out / "checkpoint.pt"
        return cache[preset]

    return get
