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


@pytest.fixture(scope="session")
def pt2_exports(mnist_root, tmp_path_factory):
    """Every format of the shipped mlp and of a tiny RGB conv-large, exported once per test session
    through `vae-export export` (AOTInductor compiles take ~15 s each on two cores).
    Returns {"mlp": (checkpoint, folder), "rgb": (checkpoint, folder)}."""
    import shutil

    import numpy as np
    from typer.testing import CliRunner

    from vae_export.cli import app
    from vae_export.config import make_config
    from vae_export.training.train import TrainSettings, train

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        message = "AOTInductor needs a C++ compiler (g++ or $CXX)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("pt2")
    rng = np.random.default_rng(0)
    np.save(root / "rgb.npy", rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8))   # (N, C, H, W) uint8
    settings = TrainSettings(epochs=1, batch_size=16, dataset=f"npy:{root / 'rgb.npy'}", test_fraction=0.25)
    train(make_config("conv-large", channels=(4, 4, 4, 4), hidden=(16,), latent_dim=8), settings, root / "rgb")
    checkpoints = {"mlp": REPO / "artifacts" / "mlp" / "checkpoint.pt", "rgb": root / "rgb" / "checkpoint.pt"}
    folders = {}
    for name, ckpt in checkpoints.items():
        folders[name] = root / f"export-{name}"
        result = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(folders[name]), "--data-dir", str(mnist_root),
                                          "--format", "onnx,pt2,aoti,torchscript", "--quiet"])
        assert result.exit_code == 0, result.output
    return {name: (checkpoints[name], folders[name]) for name in checkpoints}
