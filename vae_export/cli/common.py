"""What every command module shares: the Typer app, the two consoles, the `command` decorator that
turns library errors into one line and an exit code, and the option types used by several groups."""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from ..errors import VaeExportError

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
    """Register `fn` as a command whose library errors become one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VaeExportError as e:
            err.print(f"[red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a full disk, a permission, a read-only folder: the user's to fix
            err.print(f"[red]error:[/] {e.strerror or e}: {e.filename or ''}".rstrip(": "), markup=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return app.command()(wrapper)


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
