"""What a file is, recorded where it is written and checked wherever files are joined or paired.
numpy + stdlib only (the runtime imports it).

- Exported models: every .onnx/.torchscript records the sha256 of the checkpoint it came from
  (export.py). `same_model` refuses an encoder, decoder, variant or sidecar of another checkpoint,
  for `reconstruct`, `web`, `evaluate` and `parity` alike.
- Sample files: `sample` writes, in the spare room of its 4096-byte .npy header, a comment that numpy
  ignores and `merge` reads:

      {'descr': '|u1', 'fortran_order': False, 'shape': (3000, 1, 28, 28), }  # vae-export {"decoder_sha256": ...}

  the decoder file's sha256, its checkpoint's sha256 and variant, the run's n, seed and dtype, and,
  for a part, which samples of the run it holds. A Python comment after the dict keeps the header a
  valid literal for every numpy reader (np.load, mmap_mode, np.lib.format); numpy refuses unknown keys
  inside the dict.
"""

from __future__ import annotations

import io
import json
import os
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import ProvenanceError, VaeExportError, first_line

MARK = "vae-export "                  # the comment's prefix: "# vae-export {json}"
SAMPLES_VERSION = 1                   # bump when the samples of (decoder, seed, i) change
RUN_KEYS = ("samples", "decoder_sha256", "checkpoint_sha256", "precision", "n", "seed", "dtype")


# --- models ---

def same_model(models: Iterable[tuple[str | os.PathLike, dict[str, Any]]], what: str = "") -> str | None:
    """Refuse files exported from different checkpoints (or of different shapes); each model is
    (path, metadata). Returns the checkpoint sha256 they share. `what` ends the message: why it matters."""
    models = list(models)
    first_path, first = models[0]
    for path, meta in models[1:]:
        for key in ("checkpoint_sha256", "latent_dim", "image_shape"):
            if meta.get(key) != first.get(key):
                mine, theirs = _short(meta.get(key)), _short(first.get(key))
                raise ProvenanceError(f"{path} comes from another model than {first_path} ({key} {mine} vs {theirs})"
                                      f"{': ' + what if what else ''}; export them together from one checkpoint")
    return first.get("checkpoint_sha256")


def from_checkpoint(path: str | os.PathLike, meta: dict[str, Any], checkpoint: str | os.PathLike, sha256: str) -> None:
    """Refuse an exported file that was not exported from `checkpoint` (whose sha256 is given)."""
    if meta.get("checkpoint_sha256") != sha256:
        raise ProvenanceError(f"{path} was exported from another checkpoint (sha256 {_short(meta.get('checkpoint_sha256'))}) "
                              f"than {checkpoint} ({_short(sha256)}): use the export of this checkpoint")


def _short(value: Any) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else str(value)


# --- sample files ---

def run_record(decoder, n: int, seed: int, dtype: str, rows: range | None = None,
               part: tuple[int, int] | None = None) -> dict[str, Any]:
    """What a sample file is: the run (decoder, n, seed, dtype) and, unless it holds all of it, the
    rows 0 <= a < b <= n it holds (and the --shard K/N that asked for them)."""
    record = {"samples": SAMPLES_VERSION, "decoder_sha256": decoder.sha256,
              "checkpoint_sha256": decoder.metadata.get("checkpoint_sha256"), "precision": decoder.precision,
              "n": n, "seed": seed, "dtype": dtype}
    if rows is not None and (rows.start, rows.stop) != (0, n):
        record["rows"] = [rows.start, rows.stop]
        if part is not None:
            record["part"] = f"{part[0]}/{part[1]}"
    return record


def header_comment(record: dict[str, Any]) -> str:
    """One line of ASCII (json escapes the rest), so it cannot end the header early."""
    return "# " + MARK + json.dumps(record, sort_keys=True, separators=(", ", ": "))


@dataclass(frozen=True)
class NpyFile:
    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int                       # where the array's bytes start
    record: dict[str, Any] | None     # the vae-export comment, if any

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def rows(self) -> range:
        a, b = self.record.get("rows", [0, self.record["n"]])
        return range(a, b)

    def describe(self) -> str:
        r = self.record
        return (f"decoder {_short(r['decoder_sha256'])} ({r['precision']}), -n {r['n']}, --seed {r['seed']}, "
                f"--dtype {r['dtype']}")


def read_npy(path: Path) -> NpyFile:
    """The header of a .npy file and its vae-export record, checked against the file's size (a
    truncated copy is refused). Nothing past the header is read."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
            f.seek(8 + (2 if version == (1, 0) else 4))
            text = f.read(offset - f.tell()).decode("latin1")
    except (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError) as e:  # numpy's header parser raises all of these
        raise VaeExportError(f"{path} is not a readable .npy file ({first_line(e)})") from None
    if fortran_order or not shape:
        raise VaeExportError(f"{path} is not a C-ordered array of samples")
    npy = NpyFile(path, shape, dtype, offset, _record(text, path))
    size = path.stat().st_size
    if size != offset + npy.nbytes:
        raise VaeExportError(f"{path} holds {size - offset} bytes of data, its header "
                             f"promises {npy.nbytes}: truncated or still being written?")
    return npy


def _record(header: str, path: Path) -> dict[str, Any] | None:
    """The JSON after '# vae-export ' in the header's comment (found by Python's tokenizer, so a '#'
    inside a string of the dict is no comment), or None where there is none."""
    try:
        comments = [t.string for t in tokenize.generate_tokens(io.StringIO(header).readline) if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError):
        return None
    texts = [c[2 + len(MARK):] for c in comments if c.startswith("# " + MARK)]
    if not texts:
        return None
    try:
        record = json.loads(texts[0])
    except json.JSONDecodeError:
        raise ProvenanceError(f"{path}: its vae-export header record is not JSON (edited by hand?)") from None
    if not _well_formed(record):
        raise ProvenanceError(f"{path}: its vae-export header record is incomplete or malformed (edited by hand?)")
    return record


def _well_formed(record: Any) -> bool:
    def is_int(v: Any) -> bool:
        return type(v) is int

    rows = record.get("rows", [0, 1]) if isinstance(record, dict) else None
    return (isinstance(record, dict) and all(k in record for k in RUN_KEYS)
            and is_int(record["n"]) and is_int(record["seed"]) and record["dtype"] in ("float32", "uint8")
            and isinstance(rows, list) and len(rows) == 2 and all(map(is_int, rows))
            and ("part" not in record or isinstance(record["part"], str) and re.fullmatch(r"\d+/[1-9]\d*", record["part"])))


def check_tiling(files: list[NpyFile]) -> list[NpyFile]:
    """The parts of one run, in row order, after checking that they are: each written by `sample`,
    from one decoder, -n, --seed and --dtype, holding the rows it claims, and together covering
    0..n exactly once. Refuses, naming the file (or the missing rows), before anything is copied."""
    for f in files:
        if f.record is None:
            raise ProvenanceError(f"{f.path} was not written by `vae-export sample` (its .npy header records no run); "
                                  "merge joins only the parts of one sample run")
        if f.record["samples"] != SAMPLES_VERSION:
            raise ProvenanceError(f"{f.path} was written by another version of vae-export (samples format "
                                  f"{f.record['samples']}, this one writes {SAMPLES_VERSION})")
    first = files[0]
    run = {k: first.record[k] for k in RUN_KEYS}
    for f in files[1:]:
        if {k: f.record[k] for k in RUN_KEYS} != run:
            raise ProvenanceError(f"{f.path} is part of another run than {first.path}: {f.describe()} vs "
                                  f"{first.describe()}")
    n = run["n"]
    for f in files:
        rows = f.rows
        if not 0 <= rows.start < rows.stop <= n or f.shape[0] != len(rows):
            raise ProvenanceError(f"{f.path} holds {f.shape[0]} samples, its record says rows {rows.start}..{rows.stop - 1} "
                                  f"of {n}: edited or corrupt")
        if f.dtype != np.dtype(run["dtype"]) or f.shape[1:] != first.shape[1:]:
            raise ProvenanceError(f"{f.path} holds {f.dtype} samples of shape {f.shape[1:]}, {first.path} "
                                  f"{first.dtype} of shape {first.shape[1:]}: not parts of one run")
    ordered = sorted(files, key=lambda f: f.rows.start)
    end = 0
    for previous, f in zip([None, *ordered], ordered):
        if f.rows.start > end:
            raise ProvenanceError(f"no part holds samples {end}..{f.rows.start - 1} of the {n}"
                                  f"{_missing_part(f, end)}: merge needs every part of the run")
        if f.rows.start < end:
            raise ProvenanceError(f"{f.path} and {previous.path} both hold sample {f.rows.start}: "
                                  "each sample of the run must come from exactly one part")
        end = f.rows.stop
    if end != n:
        raise ProvenanceError(f"no part holds samples {end}..{n - 1} of the {n}{_missing_part(ordered[-1], end)}: "
                              "merge needs every part of the run")
    return ordered


def _missing_part(neighbour: NpyFile, start: int) -> str:
    """', part K/N' for the missing rows starting at `start`, when the parts say how the run was split."""
    part = neighbour.record.get("part")
    if not part:
        return ""
    n, count = neighbour.record["n"], int(part.split("/")[1])
    k = -(-start * count // n)                      # the first K whose range (shards.shard_range) starts at or after `start`
    return f" (part {k}/{count})" if k < count and n * k // count == start else ""
