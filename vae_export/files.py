"""File helpers. Every file is written whole or not at all: into a temp file beside the target,
then `os.replace`. Torch-free: the runtime uses them as well as training and export.

A temp file or staging folder is flock'ed by the process writing it; the kernel drops that lock when
the process dies (even by `kill -9`), so the next write of the same target sweeps what a crashed run
left (`sweep_stale`), and never a file that a live run is still writing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import UsageError, VaeExportError

_UMASK = os.umask(0)
os.umask(_UMASK)
STAGING_PREFIX = ".staging-"
LOCK_NAME = ".vae-export.lock"


in_flight: set[Path] = set()   # temp files, staging folders and lock files this process has open right now


def remove_in_flight() -> None:
    """Remove what this process has in flight, for an exit that skips the usual cleanup (os._exit after
    a signal, while the main thread is stuck in C code: training/distributed.py). Only our own paths."""
    for path in list(in_flight):
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else os.unlink(path)


def _locked_fd(path: str | os.PathLike) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another live process holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def sweep_stale(path: str | os.PathLike) -> None:
    """Remove the temp files of target `path` (and, for a folder, its staging folders) that a dead
    process left behind; files that a live process holds locked are kept."""
    path = Path(path)
    stale = list(path.parent.glob(f".{_glob_escape(path.name)}.{_MKSTEMP}.tmp"))
    if path.is_dir():
        stale += path.glob(f"{STAGING_PREFIX}{_MKSTEMP}")
    for candidate in stale:
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: leave it
            fd = _locked_fd(candidate)
            if fd is not None:
                try:
                    shutil.rmtree(candidate) if candidate.is_dir() else os.unlink(candidate)
                finally:
                    os.close(fd)


_MKSTEMP = "[a-z0-9_]" * 8   # the 8 random characters tempfile adds: a user's `.x.png.old.tmp` is not ours


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it replaces `path`, on error it vanishes.

    For writers that want a path (onnx.save, np.save, image savers). An OSError (a full disk, say)
    names `path`, never the hidden temp file.
    """
    path = Path(path)
    if path.is_symlink():   # write through the user's link (as `>` and cp do), never replace the link itself
        path = path.resolve()
    sweep_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        in_flight.add(Path(tmp))
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the temp file as live until we close fd
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    finally:
        in_flight.discard(Path(tmp))
        os.close(fd)


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
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path))
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot write into it", str(path))
    return path


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Refuse, before any work, an output we will not be able to write: a file whose folder is
    missing or read-only, a folder where a file is, a file where a folder is. Creates nothing."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise VaeExportError(f"{path} exists and is {'not ' if folder else ''}a folder")
    parent = path if folder and path.exists() else path.parent
    while folder and not parent.exists():   # a folder is created with its parents: check the first existing one
        parent = parent.parent
    if not parent.is_dir():
        raise VaeExportError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VaeExportError(f"cannot write {path}: folder {parent} is not writable")
    return path


def require_free_space(path: str | os.PathLike, nbytes: int, what: str) -> None:
    """Refuse a job whose output would not fit on the disk that holds `path` (checked before work)."""
    path = Path(path)
    sweep_stale(path)  # a crashed run's temp file must not count against this one
    free = shutil.disk_usage(path.parent if not path.is_dir() else path).free
    if nbytes > free:
        raise VaeExportError(f"{path}: {what} needs {_size(nbytes)} but its disk has {_size(free)} free; "
                             "write fewer samples per file (shard with --seed) or choose another disk")


def available_memory() -> int | None:
    """Bytes of memory the kernel says are available without swapping, or None where unknown."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def require_memory(nbytes: int, what: str) -> None:
    """Refuse a job that would hold more in memory than is available (checked before work)."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise VaeExportError(f"{what} needs about {_size(nbytes)} of memory but {_size(free)} is available")


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    return ""


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on a run folder for the block; a second process is refused in one line.
    The kernel releases the lock when the process dies, so a crash never leaves the folder locked.
    The lock file is removed on release (while still held), so a finished or refused run leaves
    nothing behind; a locker that finds its file replaced this way locks the new one."""
    path = Path(folder) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise VaeExportError(f"{path.parent} is in use by another vae-export run (pid {owner}); "
                                 "wait for it to finish or choose another --out") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break                                   # the file at `path` is the one we hold
        os.close(fd)                                    # its holder removed it on release: lock the new one
    in_flight.add(path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        in_flight.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


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


LEDGER = ".vae-export-files.json"


class OwnedDir:
    """A folder vae-export writes files into, beside whatever else the user keeps there (STYLE.md section 8).

    Its ledger (LEDGER) lists every file we wrote there with its sha256 and the command that wrote it. A
    file is ours while the ledger lists it with its current bytes; only those are replaced or removed.
    Any other file where we would write (the user's index.html, a folder, a link, a file of ours the user
    edited) makes the command refuse, and nothing in the folder changes. So `--out .`, `--out "$PWD"`,
    a git checkout or a deployed site with its CNAME are all safe places to write into. A symlinked
    folder is written through, never replaced.
    """

    def __init__(self, folder: str | os.PathLike, producer: str):
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(folder))
        self.path = folder.resolve()      # created only when something is written: a refusal leaves no folder
        self.producer = producer

    def ledger(self) -> dict[str, dict]:
        path = self.path / LEDGER
        try:
            ledger = json.loads(path.read_text())
            files = ledger["files"]
            if ledger.get("producer") != "vae-export" or not all(isinstance(e, dict) and "sha256" in e for e in files.values()):
                raise ValueError
            return files
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise VaeExportError(f"{path} is not the file list vae-export keeps; move it away (vae-export "
                                 "then treats every file in the folder as yours)") from None

    def ours(self, rel: str, files: dict[str, dict] | None = None) -> bool:
        """`rel` is a regular file that the ledger lists with these very bytes."""
        entry = (self.ledger() if files is None else files).get(rel)
        path = self.path / rel
        return (entry is not None and not path.is_symlink() and path.is_file()
                and sha256_file(path) in (entry["sha256"], entry.get("was")))

    def check(self, names, adopt=()) -> None:
        """Refuse, before the work, to write any of `names` (paths relative to the folder) where something
        that is not ours is. Names in `adopt` count as ours (files an earlier version wrote, recognised
        by their content, e.g. an export manifest's sha256 list)."""
        files = self.ledger()
        for rel in names:
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts or rel == LEDGER:
                raise VaeExportError(f"{rel!r} is not a file name vae-export writes")
            for i in range(1, len(parts)):      # a folder on the way must be a real folder, not a file or a link
                above = self.path.joinpath(*parts[:i])
                if above.is_symlink() or (above.exists() and not above.is_dir()):
                    raise UsageError(f"{above} is in the way of {self.path / rel} and was not written by vae-export; "
                                     "move it away or choose another --out")
            path = self.path / rel
            if os.path.lexists(path) and rel not in adopt and not self.ours(rel, files):
                raise UsageError(f"{path} exists and was not written by vae-export (or was changed since); move it "
                                 f"away or choose another --out: vae-export replaces only the files listed in {LEDGER}")

    @contextlib.contextmanager
    def rebuild(self, adopt=(), remove_stale: bool = True) -> Iterator[Path]:
        """Yield a hidden staging folder inside the folder to build a set of files in. If the block
        finishes, the staged files replace ours (each by `os.replace`), our files of the same producer
        that the new set no longer has are removed (with remove_stale), and the ledger says so; if it
        fails, nothing in the folder has changed."""
        sweep_stale(writable_dir(self.path))
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path))
        os.chmod(stage, 0o777 & ~_UMASK)
        fd = _locked_fd(stage)  # live while we hold it: a concurrent sweep leaves it alone
        in_flight.add(stage)
        try:
            yield stage
            staged = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
            self.check(staged, adopt)
            new = {rel: sha256_file(stage / rel) for rel in staged}
            files = self.ledger()
            stale = [rel for rel, e in files.items() if remove_stale and e.get("by") == self.producer
                     and rel not in new and self.ours(rel, files)]
            # first the ledger lists old and new bytes, so that a crash mid-swap leaves files still ours
            self._update({rel: {"sha256": sha, "by": self.producer,
                                **({"was": sha256_file(self.path / rel)} if self.ours(rel, files) or rel in adopt else {})}
                          for rel, sha in new.items()})
            for rel in staged:
                (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / rel, self.path / rel)
            for rel in stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / rel)
                if (self.path / rel).parent != self.path:
                    with contextlib.suppress(OSError):   # a folder that held only files of ours, now empty
                        (self.path / rel).parent.rmdir()
            self._update({rel: {"sha256": sha, "by": self.producer} for rel, sha in new.items()}, removed=stale)
        finally:
            in_flight.discard(stage)
            shutil.rmtree(stage, ignore_errors=True)
            if fd is not None:
                os.close(fd)

    def record(self, paths) -> None:
        """List files just written into the folder (by atomic_open and the like) as ours."""
        self._update({str(Path(p).resolve().relative_to(self.path)): {"sha256": sha256_file(p), "by": self.producer}
                      for p in paths})

    def _update(self, entries: dict[str, dict], removed=()) -> None:
        """Merge entries into the ledger under a lock on the folder (two commands may write one folder)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            files = {rel: e for rel, e in self.ledger().items() if rel not in removed and (self.path / rel).is_file()}
            write_json(self.path / LEDGER, {"producer": "vae-export", "files": dict(sorted({**files, **entries}.items()))})
        finally:
            os.close(fd)
