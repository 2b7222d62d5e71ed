"""The `vae-export` command line: one module per command group, each only parsing, validating and
calling library functions that tests can import directly.

Exit codes: 0 ok; 1 a runtime or data failure (one line on stderr); 2 a usage error; 130 on Ctrl-C.
Data goes to stdout; progress and diagnostics go to stderr.

    vae-export train --preset mlp --epochs 10 --out runs/mlp
"""

from __future__ import annotations

from . import bench, evaluate, export, portability, sample, train, web  # noqa: F401 - importing a module registers its commands
from .common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
