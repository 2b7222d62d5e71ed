"""File helpers. Every file is written whole or not at all: into a temp file beside the target,
then `os.replace`. Torch-free: the runtime uses them as well as training and export.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it replaces `path`, on error it vanishes.

    For writers that want a path (onnx.save, np.lib.format.open_memmap, image savers).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file for writing; it becomes `path` only if the block finishes without error."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) and check we can write into it, before any long work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {path}")
    return path


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder inside `out_dir` to write a set of files into; they replace out_dir's files
    only if the block finishes (e.g. after a check of the set), and vanish otherwise."""
    out_dir = writable_dir(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


@contextlib.contextmanager
def replaced_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside `out_dir` to build a whole tree in; it takes out_dir's place (the old
    tree is deleted) only if the block finishes, and vanishes otherwise: never a half-built tree."""
    out_dir = Path(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=writable_dir(out_dir.parent)))
    os.chmod(stage, 0o777 & ~_UMASK)  # mkdtemp makes 0700; give the folder the mode mkdir would
    old = stage.with_name(stage.name + "-old")
    try:
        yield stage
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
