"""What every command module shares: the Typer app, the two consoles, the `command` decorator that
turns library errors into one line and an exit code, and the option types used by several groups."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import Terminated, VaeExportError, first_line

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

SHIPPED = Path(__file__).resolve().parents[2] / "artifacts" / "mlp"


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
            err.print(f"[red]error:[/] {escape(str(e))}", markup=True, highlight=False)  # paths may hold [brackets]
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a full disk, a permission, a read-only folder: the user's to fix
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[red]error:[/] {escape(where + (e.strerror or first_line(e)))}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except MemoryError:
            err.print("[red]error:[/] out of memory; try a smaller --batch-size or -n", markup=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:  # Ctrl-C 130, SIGTERM 143: 128 + the signal, as shells report it
            terminated = isinstance(e, Terminated)
            err.print("terminated" if terminated else "interrupted", markup=False)
            raise typer.Exit(128 + (signal.SIGTERM if terminated else signal.SIGINT)) from None

    return app.command()(wrapper)


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
def _app() -> None:
    """Train a VAE, export encoder and decoder to TorchScript/ONNX with proven parity, sample fast."""


def shipped(model: Optional[Path], name: str) -> Path:
    """--model, or the model shipped in artifacts/ (so sampling works out of the box, offline)."""
    if model is not None:
        return model
    if not (SHIPPED / name).is_file():
        raise VaeExportError(f"no --model given and no shipped model at {SHIPPED / name} (run `make artifacts`)")
    return SHIPPED / name
