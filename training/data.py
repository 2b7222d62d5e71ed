"""Datasets as whole tensors: every image is read once into one (N, C, H, W) tensor that training keeps
on its device and slices shuffled batches from (no per-sample transforms, no workers).

    vae-export train --dataset mnist                          # also fashion-mnist, cifar10, cifar100
    vae-export train --dataset folder:photos/ --image-size 64x64 --channels 3 --preset conv-large
    vae-export train --dataset npy:faces.npy                  # (N, H, W), (N, C, H, W) or (N, H, W, C)

Named datasets come from torchvision with their own train/test split: `--data-dir`, else
$VAE_EXPORT_DATA, else ~/.cache/vae-export/data; torchvision downloads them there when online.
Folders and arrays are split here, by `test_fraction` with a fixed seed (SPLIT_SEED).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torchvision import datasets
from torchvision.transforms.v2 import functional as TF

from vae_export import images
from vae_export.errors import DataNotFound, InputError, ProvenanceError, UsageError, VaeExportError, first_line
from vae_export.files import available_memory

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
            "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
SOURCES = ("folder", "npy", "npz")      # --dataset folder:PATH, npy:PATH, npz:PATH
SPLIT_SEED = 0                          # the train/test split of folders and arrays never depends on --seed
MEMORY_SHARE = 0.8                      # refuse a dataset that needs more than this share of the free memory


class DataError(VaeExportError):
    """A dataset is unreadable, corrupt, empty or inconsistent."""


class DataChanged(ProvenanceError):
    """The data a run was trained on is not the data found now (more images, other files)."""


@dataclass
class Data:
    """Both splits as uint8 (or float32 in [0, 1]) tensors (N, C, H, W), and what they are."""

    train: torch.Tensor
    test: torch.Tensor
    description: str                    # one line for the user, the checkpoint and the export metadata
    split: dict[str, Any]               # how train/test were made, recorded in the checkpoint

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("VAE_EXPORT_DATA"):
        return Path(os.environ["VAE_EXPORT_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vae-export" / "data"


def parse_dataset(spec: str) -> tuple[str, Path | None]:
    """'mnist' -> ('mnist', None); 'folder:imgs' -> ('folder', Path('imgs')). Raises UsageError."""
    kind, sep, path = spec.partition(":")
    if not sep and kind in DATASETS:
        return kind, None
    if sep and kind in SOURCES and path:
        return kind, Path(path).expanduser()
    raise UsageError(f"unknown dataset {spec!r}; expected one of {', '.join(DATASETS)}, "
                     f"or {', '.join(s + ':PATH' for s in SOURCES)}")


def load_dataset(spec: str, root: str | Path, *, image_size: tuple[int, int] | None = None,
                 channels: int | None = None, test_fraction: float = 0.1, skip_bad_files: bool = False,
                 download: bool = True) -> Data:
    """Both splits of `spec`, resized to `image_size` (H, W) and converted to `channels` (1 grey, 3 RGB)
    when given. Folders and arrays are checked to fit in memory before they are read."""
    kind, path = parse_dataset(spec)
    size = tuple(image_size) if image_size else None
    if kind in DATASETS:
        train, test = (load_images(kind, root, split, download) for split in (True, False))
        c, h, w = train.shape[1:]
        _check_memory(len(train) + len(test), (channels or c, *(size or (h, w))), 1, kind, "a smaller --image-size")
        train, test = _conform(train, size, channels), _conform(test, size, channels)
        return Data(train, test, f"{kind} ({len(train)} train / {len(test)} test, "
                    f"{_shape_text(train.shape[1:])}, torchvision's split)", {"source": "torchvision"})
    if not path.exists():
        raise DataNotFound(f"{spec}: {path} does not exist")
    if kind == "folder":
        pixels, what, files = _read_folder(path, size, channels, skip_bad_files)
    else:
        (pixels, what), files = _read_array(path, kind, size, channels), [path]
    train, test, split = _split(pixels, test_fraction, spec)
    split["sha256"] = files_digest(files, path)    # what the run's own data is: checked by --resume and evaluate
    return Data(train, test, f"{spec} ({what}; {len(train)} train / {len(test)} test, {_shape_text(train.shape[1:])}, "
                f"split seed {SPLIT_SEED})", split)


def load_from_settings(settings: Mapping[str, Any], root: str | Path, download: bool = True) -> Data:
    """The dataset a run trained on, from its settings (a checkpoint's `settings`): same size, channels, split."""
    return load_dataset(settings.get("dataset", "mnist"), root, image_size=settings.get("image_size"),
                        channels=settings.get("image_channels"), test_fraction=settings.get("test_fraction", 0.1),
                        skip_bad_files=settings.get("skip_bad_files", False), download=download)


def load_run_data(state: Mapping[str, Any], root: str | Path, checkpoint: str | Path, download: bool = True) -> Data:
    """The data a checkpoint was trained on, refused if it is not that data any more: the one check
    behind `train --resume`, `evaluate` and `onnx --int8`'s test-loss figure, so that no command
    scores a "test" split that now holds training images."""
    data = load_from_settings(state.get("settings", {}), root, download)
    check_same_data(state.get("data") or {}, tuple(state["config"]["image_shape"]), data, checkpoint)
    return data


def check_same_data(recorded: Mapping[str, Any], image_shape: tuple[int, ...], data: Data, checkpoint: str | Path) -> None:
    """`data` must be the images a run recorded (checkpoint["data"]): the same image shape, and the same
    split: image counts and, for folders and arrays, the sha256 of the files' contents. A checkpoint
    written before a field was recorded is held to the fields it has."""
    split = recorded.get("split") or {}
    changed = [k for k in split if data.split.get(k) != split[k]]
    if tuple(data.image_shape) != tuple(image_shape) or changed:
        why = "its files' content changed" if changed == ["sha256"] else (
            f"{', '.join(f'{k} {split[k]} -> {data.split.get(k)}' for k in changed if k != 'sha256')}" if changed
            else f"image shape {tuple(image_shape)} -> {data.image_shape}")
        raise DataChanged(f"{checkpoint} was trained on {recorded.get('description') or 'other data'}; the data now is "
                          f"{data.description} ({why}): not the run's own data; restore it, or train a new run on it")


def files_digest(files: list[Path], root: Path) -> str:
    """sha256 over the files' names (relative to root) and contents, in order: the data's identity,
    independent of how (and by which library version) the pixels are decoded."""
    digest = hashlib.sha256()
    for path in files:
        name = path.name if path == root else str(path.relative_to(root))
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def load_images(dataset: str, root: str | Path, train: bool, download: bool = True) -> torch.Tensor:
    """All images of one split of a torchvision dataset as uint8 (N, C, H, W). Raises DataNotFound
    with where we looked."""
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    cls = DATASETS[dataset]
    root = Path(root)
    try:
        ds = cls(str(root), train=train, download=download)
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError... when offline or corrupt
        folder = root / cls.base_folder if hasattr(cls, "base_folder") else root / cls.__name__ / "raw"
        raise DataNotFound(
            f"{dataset} is not readable in {folder} and could not be downloaded ({first_line(e)}); "
            f"put its files there or point --data-dir / VAE_EXPORT_DATA at a folder holding {folder.relative_to(root)}"
        ) from None
    data = np.asarray(ds.data)                       # MNIST (N, 28, 28), CIFAR (N, 32, 32, 3)
    return torch.from_numpy(np.ascontiguousarray(data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], the scaling of torchvision's ToTensor; float images pass as float32."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index tensors covering 0..n-1 in batches; shuffled when a generator is given (a new
    permutation every call, i.e. every epoch). The last batch may be short, as in DataLoader."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def _read_folder(folder: Path, size: tuple[int, int] | None, channels: int | None,
                 skip_bad_files: bool) -> tuple[torch.Tensor, str, list[Path]]:
    """Every image under `folder` (recursively, following symlinked subfolders as ImageFolder does;
    labels ignored) as one tensor, decoded by vae_export.images (the runtime's own decoder): uint8, or
    float32 in [0, 1] when a file holds more than 8 bits. A first pass reads only the headers (size and
    mode) to settle the shape and check memory; the second decodes and resizes (antialiased, aspect
    ratio not kept). Also returns the files read."""
    if not folder.is_dir():
        raise DataError(f"folder:{folder}: not a folder")
    paths = image_files(folder)
    if not paths:
        raise DataError(f"folder:{folder}: no images ({', '.join(images.SUFFIXES)}) in it or its subfolders")
    headers, bad = {}, {}
    for p in paths:
        try:
            headers[p] = images.read_header(p)
        except InputError as e:
            bad[p] = _why(e, p)
    _refuse_bad(folder, bad, skip_bad_files)
    if not headers:
        raise DataError(f"folder:{folder}: none of its {len(paths)} image files could be read")
    sizes = {h.size for h in headers.values()}
    if size is None and len(sizes) > 1:
        (a, hw_a), (b, hw_b) = [next((p, h.size) for p, h in headers.items() if h.size == s) for s in list(sizes)[:2]]
        raise UsageError(f"folder:{folder}: images differ in size ({len(sizes)} sizes, e.g. {a.name} {hw_a[0]}x{hw_a[1]}, "
                         f"{b.name} {hw_b[0]}x{hw_b[1]}); pass --image-size HxW to resize them all")
    h, w = size or sizes.pop()
    c = channels or max(header.mode.channels for header in headers.values())
    dtype = np.uint8 if all(header.mode.dtype == np.uint8 for header in headers.values()) else np.float32
    _check_memory(len(headers), (c, h, w), np.dtype(dtype).itemsize, f"folder:{folder}", "a smaller --image-size or fewer images")
    out = torch.empty(len(headers), c, h, w, dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
    kept = []
    for p in headers:
        try:
            image = images.to_channels(images.decode_image(p), c, p, convert=True)     # (C, h0, w0)
            if size is None and image.shape[1:] != (h, w):
                raise InputError(f"its EXIF orientation turns it to {image.shape[1]}x{image.shape[2]}; pass --image-size")
        except InputError as e:
            bad[p] = _why(e, p)
            continue
        image = torch.from_numpy(image if dtype == np.uint8 else images.to_float(image))
        out[len(kept)] = image if image.shape[1:] == (h, w) else TF.resize(image, [h, w], antialias=True).clamp_(0, 1 if dtype == np.float32 else 255)
        kept.append(p)
    _refuse_bad(folder, bad, skip_bad_files)
    if not kept:
        raise DataError(f"folder:{folder}: none of its {len(paths)} image files could be read")
    skipped = f", {len(bad)} unreadable skipped" if bad else ""
    return out[:len(kept)], f"{len(kept)} images{skipped}", kept


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, sorted, found as torchvision's ImageFolder finds them
    (os.walk following symlinks, by suffix); hidden files and folders are left out, and a symlink
    loop is walked once."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if not f.startswith(".") and f.lower().endswith(images.SUFFIXES)
                  and os.path.isfile(os.path.join(root, f))]
    return sorted(found)


def _why(e: InputError, path: Path) -> str:
    return str(e).removeprefix(f"cannot read images from {path}: ")


def _refuse_bad(folder: Path, bad: dict[Path, str], skip: bool) -> None:
    if bad and not skip:
        first, why = next(iter(bad.items()))
        raise DataError(f"folder:{folder}: {len(bad)} unreadable image file{'s' if len(bad) > 1 else ''}, "
                        f"first {first.relative_to(folder)} ({why}); fix or remove them, or pass --skip-bad-files")


def _read_array(path: Path, kind: str, size: tuple[int, int] | None, channels: int | None) -> tuple[torch.Tensor, str]:
    """An .npy array, or the one array (or the array named `images`) of an .npz, as (N, C, H, W), read by
    vae_export.images. Memory is checked from the header, for the size and channels asked for, before
    the data is read."""
    what = f"{kind}:{path}"

    def fits(shape: tuple[int, ...], dtype: np.dtype) -> None:
        n, c, h, w = shape
        read = n * c * h * w * dtype.itemsize
        resizing = size is not None and tuple(size) != (h, w)               # TF.resize works in float32
        _check_memory(n, (max(c, channels or c), *(size or (h, w))), dtype.itemsize, what,
                      "a smaller --image-size" if resizing else "fewer images", extra=read + 4 * read // dtype.itemsize * resizing)

    try:
        array = images.read_array(path, kind, fits)
    except InputError as e:
        raise DataError(f"{what}: {_why(e, path)}") from None
    return _conform(torch.from_numpy(array), size, channels), f"{len(array)} images, {array.dtype}"


def _conform(x: torch.Tensor, size: tuple[int, int] | None, channels: int | None) -> torch.Tensor:
    """Convert to `channels` (vae_export.images.to_channels) and resize (antialiased) to `size`, where
    they differ from the images'."""
    if channels is not None and channels != x.shape[1]:
        x = torch.from_numpy(images.to_channels(x.numpy(), channels, "the dataset", convert=True))
    if size is not None and tuple(x.shape[2:]) != size:
        x = TF.resize(x, list(size), antialias=True)
        x = x if x.dtype == torch.uint8 else x.clamp_(0, 1)
    return x


def _split(images: torch.Tensor, test_fraction: float, spec: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A fixed random split: the same data gives the same test set on every run and every --seed."""
    n = len(images)
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise DataError(f"{spec}: {n} image{'s' if n > 1 else ''} cannot be split into train and test; add images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    split = {"source": "split", "seed": SPLIT_SEED, "test_fraction": test_fraction, "images": n,
             "train": n - n_test, "test": n_test}
    return images[order[n_test:]], images[order[:n_test]], split


def _check_memory(n: int, shape: tuple[int, ...], itemsize: int, what: str, hint: str = "fewer images",
                  extra: int = 0) -> None:
    """Refuse before reading a dataset that would not fit: the images kept, a copy for the split, the
    float32 copy that training keeps, and `extra` (the file as read, resize's float32 copy)."""
    pixels = n * math.prod(shape)
    need = pixels * (2 * itemsize + 4) + extra
    free = available_memory()
    if free is not None and need > MEMORY_SHARE * free:
        raise DataError(f"{what}: {n} images of {'x'.join(map(str, shape))} need about {need / 2**30:.1f} GiB in memory, "
                        f"{free / 2**30:.1f} GiB is available; use {hint}")


def _shape_text(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{h}x{w} {'RGB' if c == 3 else 'grey'}"
