"""`vae-export onnx`, `torchscript` and `parity`: export with proven parity, and check it again."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import Quiet, command, err, needs_train_extra, out


class ParityProvider(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    all = "all"


Checkpoint = Annotated[Path, typer.Argument(help="A checkpoint.pt written by `vae-export train`.")]
ExportDir = Annotated[Path, typer.Option("--out", help="Folder for the exported files.")]


@command
@needs_train_extra
def onnx(
    checkpoint: Checkpoint,
    out_dir: ExportDir = Path("export"),
    opset: Annotated[int, typer.Option(min=18, max=23, help="ONNX opset (18+: the torch.export-based exporter's range).")] = 18,
    fp16: Annotated[bool, typer.Option(help="Also write decoder.fp16.onnx (half-precision math, float32 I/O).")] = False,
    int8: Annotated[bool, typer.Option(help="Also write decoder.int8.onnx (static int8, calibrated on real latents).")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
    quiet: Quiet = False,
):
    """Export encoder.onnx and decoder.onnx (+ decoder.json sidecar), then prove parity with eager."""
    from ..export import export_decoder_variants, export_onnx

    def write(model, state, sha, folder):
        latents, images = _variant_data(model, state, data_dir) if fp16 or int8 else (None, None)
        return export_onnx(model, state, sha, folder, opset) + export_decoder_variants(
            folder, fp16=fp16, int8=int8, latents=latents, model=model, test_images=images)

    _export(checkpoint, out_dir, write, data_dir, quiet,
            f"vae-export sample --model {out_dir / 'decoder.onnx'} -n 64 --out samples.png")


def _variant_data(model, state, data_dir):
    """Calibration latents from 1000 training images and the test images that measure each variant's
    cost in nats, both from the data the checkpoint was trained on; without it, N(0, I) latents and
    no nats figure."""
    from vae_export.training.data import load_run_data, resolve_data_dir, to_float

    from ..export import calibration_latents

    try:
        data = load_run_data(state, resolve_data_dir(data_dir), "the checkpoint", download=False)
    except Exception:  # noqa: BLE001 - no data here, or not the run's own (changed since): the prior alone
        return None, None
    return calibration_latents(model, to_float(data.train[:1000])), to_float(data.test[:1000]).numpy()


@command
@needs_train_extra
def torchscript(checkpoint: Checkpoint, out_dir: ExportDir = Path("export"),
                data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
                quiet: Quiet = False):
    """Export encoder.torchscript and decoder.torchscript, then prove parity with eager."""
    from ..export import export_torchscript

    _export(checkpoint, out_dir, lambda model, state, sha, folder: export_torchscript(model, state, sha, folder),
            data_dir, quiet, f"vae-export parity {checkpoint} {out_dir}")


def _export(checkpoint: Path, out_dir: Path, write, data_dir, quiet: bool, next_command: str) -> None:
    """Export into a staging folder, prove parity there, and only then move the files into out_dir:
    a failed export never replaces a good one."""
    from ..checkpoint import load_model
    from ..export import write_manifest
    from ..files import check_writable, sha256_file, staged_dir
    from ..parity import check_parity

    check_writable(out_dir, folder=True)
    model, state = load_model(checkpoint)
    images, name = _real_images(model, state, data_dir)
    with staged_dir(out_dir) as stage:
        written = write(model, state, sha256_file(checkpoint), stage)
        rows = _parity(lambda: check_parity(model, [w.path for w in written], images=images, images_name=name), quiet)
        sizes = {w.path.name: w.bytes for w in written}
    write_manifest(out_dir)
    for w in written:
        error = _variant_error(out_dir / w.path.name)
        out.print(f"{out_dir / w.path.name}  {sizes[w.path.name] / 1e6:.2f} MB  {w.seconds:.1f} s{error}")
    if not quiet:
        err.print(f"parity: {len(rows)} checks passed" + ("" if images is not None else " (random inputs only: no test images found)"))
        err.print(f"next: {next_command}")


@command
@needs_train_extra
def parity(
    checkpoint: Checkpoint,
    directory: Annotated[Path, typer.Argument(help="Folder holding exported .onnx/.torchscript files.")],
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Absolute tolerance for every row [default: per backend].")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative tolerance for every row [default: per backend].")] = None,
    provider: Annotated[ParityProvider, typer.Option(help="ONNX Runtime providers to check; all = those that run here.")] = ParityProvider.cpu,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Also write every row as JSON.")] = None,
    quiet: Quiet = False,
):
    """Check every artifact in DIRECTORY against the eager model rebuilt from CHECKPOINT."""
    from ..checkpoint import load_model
    from ..files import check_writable
    from ..files import sha256_file
    from ..parity import artifacts_in, check_exported_from, check_parity

    if report:
        check_writable(report)
    model, state = load_model(checkpoint)
    paths = artifacts_in(directory)
    check_exported_from(paths, checkpoint, sha256_file(checkpoint))
    images, name = _real_images(model, state, data_dir)
    rows = _parity(lambda: check_parity(model, paths, provider=provider.value, images=images, atol=atol, rtol=rtol,
                                        images_name=name), quiet, report)
    out.print(f"parity: {len(rows)} checks passed for {len(paths)} artifacts"
              + ("" if images is not None else " (random inputs only: no test images found)"))


def _real_images(model, state: dict, data_dir):
    """The test images of the data the checkpoint was trained on (MNIST, a folder, an array...), and its kind."""
    from ..parity import real_images

    settings = state.get("settings", {"dataset": "mnist"})
    return (real_images(settings, data_dir, shape=model.config.image_shape),
            settings.get("dataset", "mnist").partition(":")[0])


def _variant_error(path: Path) -> str:
    """', max |diff| ... vs fp32, test loss +x nats/image' for a reduced-precision decoder, else ''."""
    if path.suffix != ".onnx" or path.name.count(".") < 2:
        return ""
    from ..runtime import read_metadata

    error = read_metadata(path).get("error_vs_fp32") or {}
    cost = error.get("test_loss_cost_nats")
    return (f"  max |diff| {error.get('max_abs', float('nan')):.1e}, mean {error.get('mean_abs', float('nan')):.1e} vs fp32"
            + ("" if cost is None else f", test loss {cost:+.3f} nats/image"))


def _parity(check, quiet: bool, report: Path | None = None):
    """Run a parity check; print its table (all rows, or only the failing ones when quiet) and raise on failure."""
    from ..errors import ParityError
    from ..parity import print_table

    try:
        rows = check()
    except ParityError as e:
        print_table([r for r in e.rows if not r.passed] if quiet else e.rows, out)
        _write_report(report, e.rows)
        raise
    if not quiet:
        print_table(rows, out)
    _write_report(report, rows)
    return rows


def _write_report(report: Path | None, rows) -> None:
    if report:
        from ..files import write_json

        write_json(report, [r.as_dict() for r in rows])


