"""Dataset loading through torchvision, on small IDX files the tests write (FashionMNIST is not
available offline) and on the real MNIST."""

import struct

import numpy as np
import pytest

from vae_export.training.data import load_images, resolve_data_dir
from vae_export.errors import DataNotFound, UsageError


def write_idx(path, array: np.ndarray) -> None:
    """IDX: zero, zero, dtype code 0x08 (uint8), ndim; big-endian int32 dims; then the raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def fake_dataset(root, name="FashionMNIST", n_train=12, n_test=5):
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images[split] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, size=n, dtype=np.uint8))
    return images


def test_fashion_mnist_loads_from_idx_files(tmp_path):
    images = fake_dataset(tmp_path)
    train = load_images("fashion-mnist", tmp_path, train=True, download=False)
    test = load_images("fashion-mnist", tmp_path, train=False, download=False)
    assert train.shape == (12, 1, 28, 28) and test.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(train.numpy()[:, 0], images["train"])


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(DataNotFound, match=str(tmp_path / "FashionMNIST" / "raw")):
        load_images("fashion-mnist", tmp_path, train=True, download=False)


def test_corrupt_idx_is_a_clear_error(tmp_path):
    fake_dataset(tmp_path)
    (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataNotFound):
        load_images("fashion-mnist", tmp_path, train=True, download=False)


def test_unknown_dataset_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        load_images("cifar", tmp_path, train=True)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_EXPORT_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("VAE_EXPORT_DATA")
    assert resolve_data_dir().parts[-2:] == ("vae-export", "data")


def test_real_mnist(mnist_root):
    train = load_images("mnist", mnist_root, train=True)
    test = load_images("mnist", mnist_root, train=False)
    assert train.shape == (60000, 1, 28, 28) and test.shape == (10000, 1, 28, 28)
