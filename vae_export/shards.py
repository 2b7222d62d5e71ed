"""Sharded sampling: N processes or machines each write one contiguous part of a run, and `merge`
joins the parts into the very file one process would have written, byte for byte. numpy + stdlib.

    for K in 0 1 2 3; do vae-export sample -n 1000000 --shard $K/4 --out part-$K.npy & done; wait
    vae-export merge part-0.npy part-1.npy part-2.npy part-3.npy --out all.npy

A shard is exact because latent chunk k comes from its own generator keyed by (seed, k)
(runtime.latent_slice): sample i is the same whichever process draws it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UsageError, VaeExportError
from .files import atomic_open, check_output
from .sampling import npy_header

COPY_BLOCK = 1 << 24                 # bytes per read while merging: memory stays flat for any N


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must be K/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= k < count:
        raise UsageError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, count


def shard_range(n: int, k: int, count: int) -> range:
    """The positions of shard k of `count` in a run of n samples: contiguous, in order, sizes within one."""
    if n < count:
        raise UsageError(f"-n {n} is smaller than the {count} shards; every shard needs a sample")
    return range(n * k // count, n * (k + 1) // count)


@dataclass(frozen=True)
class Part:
    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int                      # where the array's bytes start in the file

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def read_part(path: Path) -> Part:
    """The header of a .npy part, checked against the file's size (a truncated copy is refused)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            part = Part(path, shape, dtype, f.tell())
    except (OSError, ValueError) as e:
        raise VaeExportError(f"{path} is not a readable .npy file ({e})") from None
    if fortran_order or not shape:
        raise VaeExportError(f"{path} is not a C-ordered array of samples")
    if path.stat().st_size != part.offset + part.nbytes:
        raise VaeExportError(f"{path} holds {path.stat().st_size - part.offset} bytes of data, its header "
                             f"promises {part.nbytes}: truncated or still being written?")
    return part


def merge(paths: list[Path], out: Path, on_part: Callable[[Part], None] | None = None) -> Part:
    """Join .npy parts, in the order given, into `out` (streamed, written whole or not at all).
    All parts must share dtype and sample shape. Returns the description of the merged array."""
    if not paths:
        raise UsageError("merge needs at least one part")
    check_output(out, suffixes=(".npy",), inputs=tuple(paths))
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        raise UsageError("a part is given twice")
    parts = [read_part(p) for p in paths]
    first = parts[0]
    for p in parts[1:]:
        if (p.dtype, p.shape[1:]) != (first.dtype, first.shape[1:]):
            raise VaeExportError(f"{p.path} holds {p.dtype} samples of shape {p.shape[1:]}, "
                                 f"{first.path} {first.dtype} of shape {first.shape[1:]}: not parts of one run")
    merged = Part(out, (sum(p.shape[0] for p in parts), *first.shape[1:]), first.dtype, 0)
    if shutil.disk_usage(out.parent).free < merged.nbytes:
        raise VaeExportError(f"{out.parent} has {shutil.disk_usage(out.parent).free:,} bytes free, "
                             f"the merged file needs {merged.nbytes:,}")
    with atomic_open(out) as f:
        f.write(npy_header(merged.dtype, merged.shape))   # the header `sample` writes for the whole run
        for p in parts:
            with open(p.path, "rb") as src:
                src.seek(p.offset)
                shutil.copyfileobj(src, f, COPY_BLOCK)
            if on_part:
                on_part(p)
    return merged
