"""Sharded sampling: N processes or machines each write one contiguous part of a run, and `merge`
joins the parts into the very file one process would have written, byte for byte. numpy + stdlib.

    for K in 0 1 2 3; do vae-export sample -n 1000000 --shard $K/4 --out part-$K.npy & done; wait
    vae-export merge part-*.npy --out all.npy

A shard is exact because latent chunk k comes from its own generator keyed by (seed, k)
(runtime.latent_slice): sample i is the same whichever process draws it. Each part records in its
.npy header which run (decoder, -n, --seed, --dtype) and which samples it holds, and `merge` joins
only parts that tile one run (provenance.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

from .errors import UsageError, VaeExportError
from .files import atomic_open
from .provenance import RUN_KEYS, NpyFile, check_tiling, read_npy
from .sampling import npy_header

COPY_BLOCK = 1 << 24                 # bytes per read while merging: memory stays flat for any N


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N, ASCII digits only: an empty value (an unset shell variable,
    `--shard "$K/4"` with K unset) is a usage error, never the whole run."""
    match = re.fullmatch(r"(\d+)/(\d+)", text, re.ASCII)
    if match is None:
        raise UsageError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    k, count = int(match[1]), int(match[2])
    if not 0 <= k < count:
        raise UsageError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, count


def shard_range(n: int, k: int, count: int) -> range:
    """The positions of shard k of `count` in a run of n samples: contiguous, in order, sizes within one."""
    if n < count:
        raise UsageError(f"-n {n} is smaller than the {count} shards; every shard needs a sample")
    return range(n * k // count, n * (k + 1) // count)


def merge(paths: list[Path], out: Path, on_part: Callable[[NpyFile], None] | None = None) -> NpyFile:
    """Join the parts of one `sample` run into `out` (streamed, written whole or not at all), in the
    order of their rows, whatever order they are given in (a shell glob puts part-10 before part-2).
    Before a byte is copied, the parts must prove, by the record in their headers, that they are
    parts of one run that together hold each of its samples exactly once (provenance.check_tiling).
    The merged file carries the whole run's record: byte for byte the file one process writes."""
    if not paths:
        raise UsageError("merge needs at least one part")
    if out.suffix != ".npy":
        raise UsageError(f"--out must end in .npy, got {out.name!r}")
    if not out.parent.is_dir():
        raise UsageError(f"--out folder {out.parent} does not exist")
    resolved = [p.resolve() for p in paths]
    if out.resolve() in resolved:
        raise UsageError(f"--out {out} is one of the parts")
    if len(set(resolved)) < len(resolved):
        raise UsageError("a part is given twice")
    parts = check_tiling([read_npy(p) for p in paths])
    first = parts[0]
    n = first.record["n"]
    record = {k: first.record[k] for k in RUN_KEYS}
    merged = NpyFile(out, (n, *first.shape[1:]), first.dtype, 0, record)
    if shutil.disk_usage(out.parent).free < merged.nbytes:
        raise VaeExportError(f"{out.parent} has {shutil.disk_usage(out.parent).free:,} bytes free, "
                             f"the merged file needs {merged.nbytes:,}")
    with atomic_open(out) as f:
        f.write(npy_header(merged.dtype, merged.shape, record))   # the header `sample` writes for the whole run
        for p in parts:
            with open(p.path, "rb") as src:
                src.seek(p.offset)
                shutil.copyfileobj(src, f, COPY_BLOCK)
            if on_part:
                on_part(p)
    return merged
