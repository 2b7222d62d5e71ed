"""Datasets as whole tensors: torchvision reads the IDX files once, we keep them as one uint8 tensor
on the training device and slice shuffled batches from it (no per-sample PIL transforms, no workers).

Where the files come from: `--data-dir`, else $VAE_EXPORT_DATA, else ~/.cache/vae-export/data;
torchvision downloads them there when online.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import datasets

from vae_export.errors import DataNotFound, UsageError, first_line

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("VAE_EXPORT_DATA"):
        return Path(os.environ["VAE_EXPORT_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vae-export" / "data"


def load_images(dataset: str, root: str | Path, train: bool, download: bool = True) -> torch.Tensor:
    """All images of one split as uint8 (N, 1, 28, 28). Raises DataNotFound with where we looked."""
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    cls = DATASETS[dataset]
    root = Path(root)
    try:
        ds = cls(str(root), train=train, download=download)
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError... when offline or corrupt
        raw = root / cls.__name__ / "raw"
        raise DataNotFound(
            f"{dataset} is not readable in {raw} and could not be downloaded ({first_line(e)}); "
            f"put the IDX files there or point --data-dir / VAE_EXPORT_DATA at a folder holding {cls.__name__}/raw"
        ) from None
    return ds.data.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], the scaling of torchvision's ToTensor."""
    return images.float().div_(255)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index tensors covering 0..n-1 in batches; shuffled when a generator is given (a new
    permutation every call, i.e. every epoch). The last batch may be short, as in DataLoader."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))
