"""Batched sampling to files through the ONNX decoder: numpy + onnxruntime (+ pillow for PNG), no torch.

    vae-export sample -n 1000000 --batch-size 8192 --dtype uint8 --out samples.npy

N may exceed memory: batches are written one after another into a .npy file preallocated at its full
size, as a temp file renamed only once complete (a killed run leaves no partial file; a full disk is
an OSError before any work, not a SIGBUS from a memory map). The header is padded to 4096 bytes, so
that whole batches go to disk with O_DIRECT, past the page cache, where the file system allows it.
A worker thread decodes batch k+1 while the caller's thread writes batch k and draws the latents
of batch k+2; uint8 pixels are rounded inside the
graph (onnx_wire.py), so no pass over the pixels runs in Python. The file is not fsynced: that
would double the time of a large run on a slow disk; `sync` if it must survive a power cut.
"""

from __future__ import annotations

import io
import math
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UsageError
from .files import atomic_open, atomic_path, check_writable, require_free_space, require_memory
from .latents import interpolate, manifold_latents
from .provenance import header_comment, run_record
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
                   start: int = 0, stop: int | None = None, part: tuple[int, int] | None = None) -> SampleStats:
    """Samples start..stop-1 (default: all n) of the n-sample run for `seed`: the same images
    whatever the batch size, provider or range, since latents are keyed by (seed, chunk),
    so shards of a run join into it (shards.py). A .npy records in its header which run and
    rows it holds (and `part`, the --shard K/N that asked for them), which `merge` checks."""
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
        record = run_record(decoder, n, seed, dtype, range(start, stop), part)
        _stream_npy(decoder, path, seed, range(start, stop), batch_size, dtype, on_batch, record)
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
                on_batch: Callable[[int], None] | None, record: dict) -> None:
    """Write samples rows.start..rows.stop-1 as one .npy: header, then batches in order."""
    shape = (len(rows), *decoder.image_shape)
    starts = range(rows.start, rows.stop, batch_size)
    # the worker decodes batch k+1 into one buffer while this thread writes batch k from the other,
    # then draws the latents of batch k+2 (a decode leaves a core partly idle; drawing fills it)
    buffers = [_aligned_empty((min(batch_size, len(rows)), *decoder.image_shape), DTYPES[dtype]) for _ in range(2)]

    def latents(k: int) -> np.ndarray:
        return decoder.latents(seed, starts[k], min(starts[k] + batch_size, rows.stop))

    def produce(k: int, z: np.ndarray) -> np.ndarray:
        return decoder.decode(z, out=buffers[k % 2][: len(z)], dtype=dtype)

    header = npy_header(np.dtype(dtype), shape, record)
    with atomic_path(path) as tmp, open(tmp, "r+b", buffering=0) as f:
        f.write(header)
        os.posix_fallocate(f.fileno(), 0, len(header) + int(np.prod(shape)) * np.dtype(dtype).itemsize)
        direct = _open_direct(tmp)
        try:
            offset = len(header)
            with ThreadPoolExecutor(max_workers=1) as worker:
                pending = worker.submit(produce, 0, latents(0))
                ahead = latents(1) if len(starts) > 1 else None
                for k in range(len(starts)):
                    images = pending.result()
                    if k + 1 < len(starts):
                        pending = worker.submit(produce, k + 1, ahead)
                        ahead = latents(k + 2) if k + 2 < len(starts) else None
                    aligned = direct is not None and offset % BLOCK == images.nbytes % BLOCK == images.ctypes.data % BLOCK == 0
                    _pwrite_all(direct if aligned else f.fileno(), f.fileno(), images, offset)
                    offset += images.nbytes
                    if on_batch:
                        on_batch(len(images))
        finally:
            if direct is not None:
                os.close(direct)


# Writes of whole blocks at block offsets from a block-aligned buffer may bypass the page cache
# (O_DIRECT). Buffered, a 1.6 GB file costs the kernel about 3 s of CPU copying it into the cache;
# direct, about 0.1 s, the device doing the rest while both cores decode (benchmarks/sample_speed.py).
BLOCK = 4096


def npy_header(dtype: np.dtype, shape: tuple[int, ...], record: dict | None = None) -> bytes:
    """A .npy version 1.0 header padded with spaces to BLOCK bytes, so the data starts block-aligned
    (the format asks only that the header's length be a multiple of 64). `record`, what the file is,
    goes into the padding as a comment after the dict, which every numpy reader skips (provenance.py)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    header = buf.getvalue()                          # magic (6) + version (2) + length (2) + dict + spaces + "\n"
    text = header[10:-1].rstrip(b" ")
    if record is not None:
        text += b"  " + header_comment(record).encode("ascii")
    if 10 + len(text) + 1 > BLOCK:
        raise UsageError(f"an array of shape {shape} needs a .npy header over {BLOCK} bytes")
    body = text + b" " * (BLOCK - 10 - len(text) - 1) + b"\n"
    return header[:8] + struct.pack("<H", len(body)) + body


def _aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty whose data starts on a BLOCK boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + BLOCK, np.uint8)
    start = -raw.ctypes.data % BLOCK
    return raw[start: start + nbytes].view(dtype).reshape(shape)


def _open_direct(path: Path) -> int | None:
    """A second descriptor on `path` that bypasses the page cache, or None where the file system
    refuses O_DIRECT (tmpfs, some network file systems) or the platform has none."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except (AttributeError, OSError):
        return None


def _pwrite_all(fd: int, fallback: int, array: np.ndarray, offset: int) -> None:
    """Write all of `array` at `offset`; a short write finishes through `fallback` (buffered), since
    the rest is no longer block-aligned."""
    view = memoryview(array).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset, fd = view[n:], offset + n, fallback


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

