"""`vae-export bench`: speed of every backend, each output checked first."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import Quiet, command, err, needs_train_extra, out, shipped


@command
@needs_train_extra
def bench(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="checkpoint.pt [default: the shipped artifacts/mlp model].")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated decode/encode batch sizes.")] = "1,64,1024,8192",
    providers: Annotated[str, typer.Option(help="Comma-separated: cpu, cuda (cuda rows only where CUDA really runs).")] = "cpu,cuda",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per backend and batch size (after warm-up).")] = 20,
    compile: Annotated[bool, typer.Option(help="Include torch.compile (slow to compile on small CPUs).")] = True,
    aoti: Annotated[bool, typer.Option(help="Include AOTInductor packages, AVX2 and native (4 C++ compiles first).")] = True,
    train: Annotated[bool, typer.Option(help="Include training throughput per preset.")] = True,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root for real images.")] = None,
    report: Annotated[Optional[Path], typer.Option("--out", help="Write the full report as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a throughput plot (.png).")] = None,
    quiet: Quiet = False,
):
    """Decode/encode latency and throughput per backend (eager, TorchScript, .pt2, AOTInductor, torch.compile,
    ONNX Runtime CPU/CUDA), every output checked against eager first; training throughput per preset."""
    from ..bench import run_bench
    from ..bench_report import plot_report, print_report
    from ..files import check_writable, write_json

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or not all(0 < b <= 2**20 for b in sizes):
        raise typer.BadParameter(f"--batch-sizes must be integers 1..{2**20} separated by commas, got {batch_sizes!r}")
    if plot and plot.suffix != ".png":
        raise typer.BadParameter(f"--plot must end in .png, got {plot.name!r}")
    for path in (report, plot):  # before minutes of benchmarking, not after
        if path:
            check_writable(path)
    result = run_bench(shipped(checkpoint, "checkpoint.pt"), sizes,
                       [p.strip() for p in providers.split(",")], repeats, train,
                       log=None if quiet else (lambda line: err.print(line, markup=False)),
                       compile=compile, data_dir=data_dir, aoti=aoti)
    print_report(result, out)
    if report:
        write_json(report, result)
    if plot:
        plot_report(result, plot)


