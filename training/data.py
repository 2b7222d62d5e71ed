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

import contextlib
import hashlib
import os
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from vae_export.errors import DataNotFound, ProvenanceError, UsageError, VaeExportError, first_line

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
            "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
SOURCES = ("folder", "npy", "npz")      # --dataset folder:PATH, npy:PATH, npz:PATH
SPLIT_SEED = 0                          # the train/test split of folders and arrays never depends on --seed
MEMORY_SHARE = 0.8                      # refuse a dataset that needs more than this share of the free memory
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}   # Pillow modes read as grey by default; any other as RGB


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
        images, what, files = _read_folder(path, size, channels, skip_bad_files)
    else:
        (images, what), files = _read_array(path, kind, size, channels), [path]
    train, test, split = _split(images, test_fraction, spec)
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
    return torch.from_numpy(_to_nchw(np.asarray(ds.data), dataset))  # MNIST (N, 28, 28), CIFAR (N, 32, 32, 3)


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
    """Every image under `folder` (recursively, as ImageFolder finds them; labels ignored) as one uint8
    tensor. A first pass reads only the headers (size and mode) to settle the shape and check memory;
    the second decodes and resizes (antialiased, aspect ratio not kept). Also returns the files read."""
    from PIL import Image

    if not folder.is_dir():
        raise DataError(f"folder:{folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise DataError(f"folder:{folder}: no images ({', '.join(IMG_EXTENSIONS)}) in it or its subfolders")
    headers, bad = {}, {}
    for p in paths:
        try:
            with Image.open(p) as im:
                headers[p] = (im.height, im.width), im.mode
        except Exception as e:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, OSError, DecompressionBombError...
            bad[p] = first_line(e, 120)
    _refuse_bad(folder, bad, skip_bad_files)
    if not headers:
        raise DataError(f"folder:{folder}: none of its {len(paths)} image files could be read")
    sizes = {hw for hw, _ in headers.values()}
    if size is None and len(sizes) > 1:
        (a, hw_a), (b, hw_b) = [next((p, hw) for p, (hw, _) in headers.items() if hw == s) for s in list(sizes)[:2]]
        raise UsageError(f"folder:{folder}: images differ in size ({len(sizes)} sizes, e.g. {a.name} {hw_a[0]}x{hw_a[1]}, "
                         f"{b.name} {hw_b[0]}x{hw_b[1]}); pass --image-size HxW to resize them all")
    h, w = size or sizes.pop()
    c = channels or (1 if all(mode in GREY_MODES for _, mode in headers.values()) else 3)
    _check_memory(len(headers), (c, h, w), 1, f"folder:{folder}", "a smaller --image-size or fewer images")
    out = torch.empty(len(headers), c, h, w, dtype=torch.uint8)
    kept = []
    for p in headers:
        try:
            image = _decode(p, c)                                   # (C, h0, w0)
        except Exception as e:  # noqa: BLE001 - a header that reads but data that does not (truncated files)
            bad[p] = first_line(e, 120)
            continue
        out[len(kept)] = image if image.shape[1:] == (h, w) else TF.resize(image, [h, w], antialias=True)
        kept.append(p)
    _refuse_bad(folder, bad, skip_bad_files)
    if not kept:
        raise DataError(f"folder:{folder}: none of its {len(paths)} image files could be read")
    skipped = f", {len(bad)} unreadable skipped" if bad else ""
    return out[:len(kept)], f"{len(kept)} images{skipped}", kept


def _decode(path: Path, channels: int) -> torch.Tensor:
    """One image file as uint8 (C, H, W), decoded by Pillow (torchvision 0.29 deprecates its own
    decoders in favour of TorchCodec, which is for video)."""
    from PIL import Image

    with Image.open(path) as im:
        return TF.pil_to_tensor(im.convert("L" if channels == 1 else "RGB"))


def _refuse_bad(folder: Path, bad: dict[Path, str], skip: bool) -> None:
    if bad and not skip:
        first, why = next(iter(bad.items()))
        raise DataError(f"folder:{folder}: {len(bad)} unreadable image file{'s' if len(bad) > 1 else ''}, "
                        f"first {first.relative_to(folder)} ({why}); fix or remove them, or pass --skip-bad-files")


def _read_array(path: Path, kind: str, size: tuple[int, int] | None, channels: int | None) -> tuple[torch.Tensor, str]:
    """An .npy array, or the one array (or the array named `images`) of an .npz, as (N, C, H, W). Its shape
    and dtype come from the header, so memory is checked before the data is read."""
    try:
        with contextlib.ExitStack() as stack:
            if kind == "npy":
                f = stack.enter_context(open(path, "rb"))
            else:
                zf = stack.enter_context(zipfile.ZipFile(path))
                f = stack.enter_context(zf.open(_npz_member(zf, path)))
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            _check_array(shape, dtype, f"{kind}:{path}")
            f.seek(0)
            array = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, SyntaxError, tokenize.TokenError) as e:  # numpy's header parser raises each
        raise DataError(f"{kind}:{path}: not a readable {kind} file ({first_line(e, 160)})") from None
    images = _to_nchw(array, f"{kind}:{path}")
    if images.dtype != np.uint8:
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"{kind}:{path}: float images must lie in [0, 1] (got {images.min():g} .. {images.max():g})")
        images = images.astype(np.float32, copy=False)
    return _conform(torch.from_numpy(images), size, channels), f"{len(images)} images, {array.dtype}"


def _npz_member(zf: zipfile.ZipFile, path: Path) -> str:
    names = [n for n in zf.namelist() if n.endswith(".npy")]
    if len(names) == 1:
        return names[0]
    if "images.npy" in names:
        return "images.npy"
    raise DataError(f"npz:{path}: holds {[n[:-4] for n in names]}; expected one array, or one named 'images'")


def _check_array(shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    """Refuse, from the header alone, an array of the wrong type or too big to read."""
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise DataError(f"{what}: dtype {dtype}; expected uint8, or float in [0, 1]")
    if len(shape) not in (3, 4):
        raise DataError(f"{what}: images have shape {shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    _check_memory(shape[0], shape[1:], dtype.itemsize, what)


def _to_nchw(array: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, C, H, W) as is; (N, H, W, C) -> (N, C, H, W); C is 1 or 3."""
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[3] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise DataError(f"{what}: images have shape {array.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C) "
                        "with C = 1 or 3")
    if len(array) == 0:
        raise DataError(f"{what}: holds no images")
    return np.ascontiguousarray(array)


def _conform(images: torch.Tensor, size: tuple[int, int] | None, channels: int | None) -> torch.Tensor:
    """Resize (antialiased) to `size` and convert to `channels`, where they differ from the images'."""
    if channels is not None and channels != images.shape[1]:
        images = TF.rgb_to_grayscale(images) if channels == 1 else images.expand(-1, 3, -1, -1).contiguous()
    if size is not None and tuple(images.shape[2:]) != size:
        images = TF.resize(images, list(size), antialias=True)
    return images


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


def _check_memory(n: int, shape: tuple[int, ...], itemsize: int, what: str, hint: str = "fewer images") -> None:
    """Refuse before reading a dataset that would not fit: the images as read, a copy for the split, and
    the float32 copy that training keeps."""
    pixels = n * int(np.prod(shape))
    need = pixels * (2 * itemsize + 4)
    free = _available_memory()
    if free is not None and need > MEMORY_SHARE * free:
        raise DataError(f"{what}: {n} images of {'x'.join(map(str, shape))} need about {need / 2**30:.1f} GiB in memory, "
                        f"{free / 2**30:.1f} GiB is available; use {hint}")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def _shape_text(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{h}x{w} {'RGB' if c == 3 else 'grey'}"
