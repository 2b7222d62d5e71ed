"""Batched sampling to files through the ONNX decoder: numpy + onnxruntime (+ pillow for PNG), no torch.

    vae-export sample -n 1000000 --batch-size 8192 --dtype uint8 --out samples.npy

N may exceed memory: batches are written one after another into a .npy file preallocated at its full
size, as a temp file renamed only once complete (a killed run leaves no partial file; a full disk is
an OSError before any work, not a SIGBUS from a memory map). A worker thread draws latents and
decodes batch k+1 while the caller's thread writes batch k; uint8 pixels are rounded inside the
graph (onnx_wire.py), so no pass over the pixels runs in Python. The file is not fsynced: that
would double the time of a large run on a slow disk; `sync` if it must survive a power cut.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UsageError
from .files import atomic_open, atomic_path, check_writable, require_free_space, require_memory
from .latents import interpolate, manifold_latents
from .runtime import Decoder, latent_slice

DTYPES = {"float32": np.float32, "uint8": np.uint8}
SUFFIXES = (".npy", ".png")


@dataclass
class SampleStats:
    n: int
    seconds: float
    provider: str

    @property
    def per_second(self) -> float:
        return self.n / self.seconds if self.seconds else float("inf")


def check_out_path(path: Path) -> None:
    """Refuse an output we cannot write before any work starts."""
    if path.suffix not in SUFFIXES:
        raise UsageError(f"--out must end in {' or '.join(SUFFIXES)}, got {path.name!r}")
    if not path.parent.is_dir():
        raise UsageError(f"--out folder {path.parent} does not exist")
    check_writable(path)


def check_job_size(path: Path, n: int, batch_size: int, image_shape: tuple[int, ...], dtype: str = "float32") -> None:
    """Refuse, before any work, a job that cannot finish: a .npy larger than the free space on its disk,
    or more in memory than is available (a .png grid holds every image; a batch holds its buffers).
    There is no override: to write more than a disk holds, shard (several files, one --seed each)."""
    pixels = math.prod(image_shape)
    if path.suffix == ".png":
        # float32 batches and their concatenation (8 bytes a pixel), grid()'s float copy (4), uint8 pixels and canvas (2)
        require_memory(n * pixels * 14, f"a .png grid of {n:,} images (held in memory)")
        return
    require_free_space(path, 128 + n * pixels * np.dtype(DTYPES[dtype]).itemsize, f"{n:,} samples as {dtype}")
    require_memory(3 * min(batch_size, n) * pixels * 4, f"--batch-size {batch_size:,}")


def sample_to_file(decoder: Decoder, path: Path, n: int, *, seed: int = 0, batch_size: int = 8192,
                   dtype: str = "float32", on_batch: Callable[[int], None] | None = None,
                   start: int = 0, stop: int | None = None) -> SampleStats:
    """Samples start..stop-1 (default: all n) of the n-sample run for `seed`: the same images
    whatever the batch size, provider or range, since latents are keyed by (seed, chunk),
    so shards of a run join into it (shards.py)."""
    stop = n if stop is None else stop
    if n <= 0 or batch_size <= 0:
        raise UsageError(f"-n and --batch-size must be > 0, got {n} and {batch_size}")
    if not 0 <= start < stop <= n:
        raise UsageError(f"the range {start}..{stop} is not a non-empty part of 0..{n}")
    check_out_path(path)
    batch_size = min(batch_size, stop - start)   # the same samples whatever the batch size: no buffer larger than the job
    check_job_size(path, stop - start, batch_size, decoder.image_shape, dtype)
    t0 = time.perf_counter()
    if path.suffix == ".png":
        images = np.concatenate([decoder.decode(decoder.latents(seed, i, min(i + batch_size, stop)))
                                 for i in range(start, stop, batch_size)])
        save_png_grid(images, path)
    else:
        _stream_npy(decoder, path, seed, range(start, stop), batch_size, dtype, on_batch)
    return SampleStats(stop - start, time.perf_counter() - t0, decoder.provider)


def decode_to_file(decoder: Decoder, z: np.ndarray, path: Path, dtype: str = "float32", nrow: int | None = None) -> None:
    """Decode given latents (an interpolation, a manifold grid) into .npy or a .png grid."""
    check_out_path(path)
    check_job_size(path, len(z), len(z), decoder.image_shape, dtype)
    if path.suffix == ".png":
        save_png_grid(decoder.decode(z), path, nrow=nrow)
    else:
        with atomic_open(path) as f:  # a file object: np.save would append .npy to a temp path
            np.save(f, decoder.decode(z, dtype=dtype), allow_pickle=False)


def interpolation_latents(decoder: Decoder, seeds: tuple[int, int], steps: int) -> np.ndarray:
    """From the first latent of seed A to the first latent of seed B, in `steps` points."""
    a, b = (latent_slice(s, 0, 1, decoder.latent_dim)[0] for s in seeds)
    return interpolate(a, b, steps)


def manifold(decoder: Decoder, n: int = 30) -> np.ndarray:
    if decoder.latent_dim != 2:
        raise UsageError(f"--manifold needs a 2-D latent; {decoder.path} has latent_dim {decoder.latent_dim}")
    return manifold_latents(n)


def _stream_npy(decoder: Decoder, path: Path, seed: int, rows: range, batch_size: int, dtype: str,
                on_batch: Callable[[int], None] | None) -> None:
    """Write samples rows.start..rows.stop-1 as one .npy: header, then batches in order."""
    shape = (len(rows), *decoder.image_shape)
    starts = range(rows.start, rows.stop, batch_size)
    # the worker decodes into one buffer while this thread writes the other
    buffers = [np.empty((min(batch_size, len(rows)), *decoder.image_shape), DTYPES[dtype]) for _ in range(2)]

    def produce(k: int) -> np.ndarray:
        i = starts[k]
        z = decoder.latents(seed, i, min(i + batch_size, rows.stop))
        return decoder.decode(z, out=buffers[k % 2][: len(z)], dtype=dtype)

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        f.flush()
        os.posix_fallocate(f.fileno(), 0, f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = worker.submit(produce, 0)
            for k in range(len(starts)):
                images = pending.result()
                if k + 1 < len(starts):
                    pending = worker.submit(produce, k + 1)
                f.write(images)
                if on_batch:
                    on_batch(len(images))


def to_dtype(images: np.ndarray, dtype, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [0, 1] -> float32 as is, or uint8 rounded to the nearest of 0..255."""
    if dtype == np.float32:
        return images
    scaled = np.multiply(images, 255.0, out=images)      # in place: the float buffer is ours
    np.add(scaled, 0.5, out=scaled)
    out = np.empty(images.shape, np.uint8) if out is None else out
    np.copyto(out, scaled, casting="unsafe")             # truncation after +0.5 = rounding
    return out


def grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """(B, C, H, W) in [0, 1], C = 1 or 3 -> one uint8 image, (rows*(H+p)+p, cols*(W+p)+p) grey or
    (..., ..., 3) colour, laid out like torchvision's make_grid, in numpy so that sampling never imports torch."""
    b, c, h, w = images.shape
    if c not in (1, 3):
        raise UsageError(f"a PNG grid needs 1 (grey) or 3 (RGB) channels, got {c}")
    cols = nrow or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    pixels = to_dtype(images.astype(np.float32, copy=True), np.uint8).transpose(0, 2, 3, 1)  # (B, H, W, C)
    canvas = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for k in range(b):
        r, col = divmod(k, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[y: y + h, x: x + w] = pixels[k]
    return canvas[..., 0] if c == 1 else canvas


def save_png_grid(images: np.ndarray, path: Path, nrow: int | None = None, padding: int = 2) -> None:
    """A grey or RGB PNG grid of (B, C, H, W) images in [0, 1], written atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(grid(images, nrow, padding)).save(tmp, format="PNG")

