"""What every command module shares: the Typer app, the two consoles, the `command` decorator that
turns library errors into one line and an exit code, and the option types used by several groups."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import signal
import sys
import threading
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import Terminated, VaeExportError, first_line

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

# The modules of the `train` extra (pyproject.toml), which the torch commands need.
TRAIN_EXTRA = ("torch", "torchvision", "onnx", "onnxscript", "matplotlib")


class Device(str, Enum):
    """Where to run: training (--device) and onnxruntime (--provider) alike."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final result.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")]


def command(fn: Callable) -> Callable:
    """Register `fn` as a command whose library errors become one line and an exit code. SIGTERM is
    raised as `Terminated` (a KeyboardInterrupt) for the command's duration, so it cleans up like Ctrl-C."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _sigterm_raises():
                return fn(*args, **kwargs)
        except VaeExportError as e:
            _error(str(e))
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a full disk, a permission, a read-only folder: the user's to fix
            where = f"{e.filename}: " if e.filename else ""
            _error(where + (e.strerror or first_line(e)))
            raise typer.Exit(1) from None
        except MemoryError:
            _error("out of memory; try a smaller --batch-size or -n")
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:  # Ctrl-C 130, SIGTERM 143: 128 + the signal, as shells report it
            terminated = isinstance(e, Terminated)
            if not _rank_errors():      # a rank of `train --nproc`: the command that started it says so, once
                err.print("terminated" if terminated else "interrupted", markup=False)
            raise typer.Exit(128 + (signal.SIGTERM if terminated else signal.SIGINT)) from None
        except Exception as e:
            if not _rank_errors() or isinstance(e, (typer.Exit, typer.Abort, typer.BadParameter)):
                raise
            _error(first_line(e))   # a rank's RuntimeError (a peer gone from a collective, say): one line too
            raise typer.Exit(1) from None

    return app.command()(wrapper)


def _rank_errors() -> Path | None:
    """Under `train --nproc` (training/launch.py), where this rank's error line goes instead of stderr."""
    folder = os.environ.get("VAE_EXPORT_RANK_ERRORS")
    return Path(folder) / f"rank-{os.environ['RANK']}" if folder and "RANK" in os.environ else None


def _error(line: str) -> None:
    """One line on stderr; a rank of `train --nproc` writes it for the launcher, which prints one for all ranks."""
    own = _rank_errors()
    if own is None:
        err.print(f"[red]error:[/] {escape(line)}", markup=True, highlight=False)  # paths may hold [brackets]
        return
    with contextlib.suppress(OSError):
        own.write_text(line + "\n")


def needs_train_extra(fn: Callable) -> Callable:
    """Mark a command that needs torch: without the `train` extra it refuses in one line (exit 2) instead of
    failing on an import; its --help still works. Goes under @command."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        missing = [m for m in TRAIN_EXTRA if importlib.util.find_spec(m) is None]
        if missing:
            line = f'vae-export {fn.__name__} needs the training extra: pip install "vae-export[train]" (missing: {", ".join(missing)})'
            err.print(f"[red]error:[/] {escape(line)}", markup=True, highlight=False)
            raise typer.Exit(2)
        return fn(*args, **kwargs)

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        out.print(f"vae-export {__version__}")
        raise typer.Exit()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated in the main thread (signals can only be handled there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.callback()
def _app(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Train a VAE, export encoder and decoder to ONNX, .pt2 (torch.export, AOTInductor) and legacy
    TorchScript with proven parity, sample fast."""


def shipped_dir() -> Path:
    """The default model's folder: artifacts/mlp in a checkout, inside the installed package from a wheel
    (pyproject.toml maps one onto the other). pip installs unzipped, so it is a real folder, as onnxruntime needs."""
    try:
        return Path(str(resources.files("vae_export.artifacts"))) / "mlp"
    except ModuleNotFoundError:  # a checkout never installed, or installed before the mapping existed
        raise VaeExportError("no shipped model: install vae-export (in a checkout: pip install -e .)") from None


def shipped(model: Optional[Path], name: str) -> Path:
    """--model, or the model shipped with the package (so sampling works out of the box, offline)."""
    if model is not None:
        return model
    path = shipped_dir() / name
    if not path.is_file():
        hint = ("the wheel ships the ONNX model only: pass one, e.g. artifacts/mlp/checkpoint.pt from the repository"
                if name == "checkpoint.pt" else "run `make artifacts`")
        raise VaeExportError(f"no {name} given and none shipped at {path} ({hint})")
    return path
