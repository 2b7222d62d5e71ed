"""`vae-export portability`: do the exported files load and agree in the runtimes apps embed?

    vae-export portability artifacts/mlp --runtimes all
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import Quiet, command, err, out


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    matrix = "matrix"


@command
def portability(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="An export folder (encoder.onnx, decoder*.onnx).")],
    runtimes: Annotated[str, typer.Option(help="Comma-separated: onnxruntime, openvino, openvino-bf16, tract, opencv, "
                                                "opencv-classic, node, web; all = every one (those not installed are listed with their install line).")] = "all",
    n: Annotated[int, typer.Option("-n", min=1, help="Inputs per file: N(0, I) latents, uniform images.")] = 1000,
    fmt: Annotated[Format, typer.Option("--format", help="table; markdown (every row); matrix (runtime x file, for a README).")] = Format.table,
    report: Annotated[Optional[Path], typer.Option(help="Also write every row as JSON.")] = None,
    quiet: Quiet = False,
):
    """Run every ONNX file of DIRECTORY in each runtime, as its docs say an app should, against onnxruntime
    float32. Exit 1 if an installed runtime fails a file (a runtime's known upstream bug is reported, not failed)."""
    from .. import portability as p
    from ..errors import ParityError
    from ..files import check_writable, write_json

    chosen = p.selected(runtimes)
    if report:
        check_writable(report)
    rows = p.check(directory, chosen, n=n)
    if report:
        write_json(report, [r.as_dict() for r in rows])
    failed = p.failed(rows)
    if fmt == Format.table:
        if not quiet or failed:
            p.print_table(failed if quiet else rows, out)
    else:
        out.print((p.markdown if fmt == Format.markdown else p.matrix)(rows), markup=False)
    missing = sorted({r.runtime for r in rows if r.result == "not installed"})
    if missing and not quiet:
        err.print(f"not installed: {', '.join(missing)} (their rows say how to install them)")
    if failed:
        raise ParityError(f"{len(failed)} of {len(rows)} rows failed: "
                          + ", ".join(f"{r.file} in {r.runtime}" for r in failed[:4]) + ("..." if len(failed) > 4 else ""))
    (out if fmt == Format.table else err).print(f"portability: {len(rows)} rows, none failed ({len(chosen) - len(missing)} runtimes installed of {len(chosen)})")
