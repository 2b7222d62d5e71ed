"""The `vae-export` command line: one module per command group, each only parsing, validating and
calling library functions that tests can import directly.

Exit codes: 0 ok; 1 a runtime or data failure (one line on stderr); 2 a usage error; 130 on Ctrl-C.
Data goes to stdout; progress and diagnostics go to stderr.

    vae-export train --preset mlp --epochs 10 --out runs/mlp
"""

from __future__ import annotations

from . import bench, evaluate, export, portability, sample, train, web  # noqa: F401 - importing a module registers its commands
from .common import app

# `vae-export --help` lists the commands in the order a user meets them, not the order the modules are
# imported in. A command missing here (a new one) keeps its place after these.
WORKFLOW = ("train", "export", "onnx", "torchscript", "parity", "sample", "encode", "reconstruct", "merge",
            "evaluate", "web", "bench")


def _workflow_place(info) -> int:
    name = (info.name or info.callback.__name__).replace("_", "-")
    return WORKFLOW.index(name) if name in WORKFLOW else len(WORKFLOW)


app.registered_commands.sort(key=_workflow_place)  # stable: unlisted commands keep their relative order


def main() -> None:
    app()


__all__ = ["WORKFLOW", "app", "main"]
