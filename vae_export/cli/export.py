"""`vae-export export` (every format), its short forms `onnx` and `torchscript`, and `parity`: export
with proven parity, and check it again.

    vae-export export runs/mlp/checkpoint.pt --out runs/mlp/export --format onnx,pt2,aoti,torchscript
"""

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


class AotiIsa(str, Enum):
    avx2 = "avx2"
    native = "native"


FORMAT_NAMES = ("onnx", "pt2", "aoti", "torchscript")
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
    bf16: Annotated[bool, typer.Option(help="Also measure OpenVINO's bf16 precision of decoder.onnx (error and cost in nats, recorded in its metadata; needs the runtimes extra).")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
    quiet: Quiet = False,
):
    """Export encoder.onnx and decoder.onnx (+ decoder.json sidecar), then prove parity with eager."""
    from ..export import export_decoder_variants, export_onnx

    def write(model, state, sha, folder):
        latents, images = _variant_data(model, state, data_dir) if fp16 or int8 or bf16 else (None, None)
        return export_onnx(model, state, sha, folder, opset) + export_decoder_variants(
            folder, fp16=fp16, int8=int8, latents=latents, model=model, test_images=images, bf16=bf16)

    _export(checkpoint, out_dir, write, data_dir, quiet,
            f"vae-export sample --model {out_dir / 'decoder.onnx'} -n 64 --out samples.png")


@command
@needs_train_extra
def export(
    checkpoint: Checkpoint,
    out_dir: ExportDir = Path("export"),
    format: Annotated[str, typer.Option(
        "--format", help="Comma-separated: onnx; pt2 (torch.export ExportedProgram); aoti (AOTInductor package, "
        "needs a C++ compiler); torchscript (legacy: torch.jit is deprecated upstream).")] = "onnx",
    aoti_isa: Annotated[AotiIsa, typer.Option(
        help="CPU the aoti packages are compiled for: avx2 runs on any x86-64 CPU with AVX2 (Intel Haswell, AMD Zen and later); "
        "native is this machine's best and may not run elsewhere.")] = AotiIsa.avx2,
    opset: Annotated[int, typer.Option(min=18, max=23, help="ONNX opset (18+: the torch.export-based exporter's range).")] = 18,
    fp16: Annotated[bool, typer.Option(help="With onnx: also write decoder.fp16.onnx.")] = False,
    int8: Annotated[bool, typer.Option(help="With onnx: also write decoder.int8.onnx (calibrated on real latents).")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
    quiet: Quiet = False,
):
    """Export encoder and decoder in every --format, then prove parity with eager for each file."""
    formats = list(dict.fromkeys(f.strip() for f in format.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMAT_NAMES]
    if not formats or unknown:
        raise typer.BadParameter(f"--format takes a comma-separated list of {', '.join(FORMAT_NAMES)}; got {format!r}")
    if (fp16 or int8) and "onnx" not in formats:
        raise typer.BadParameter("--fp16 and --int8 are ONNX variants: add onnx to --format")
    from ..export import export_decoder_variants, export_onnx, export_torchscript
    from ..export_pt2 import check_aoti_toolchain, export_aoti, export_pt2

    if "aoti" in formats:
        check_aoti_toolchain(aoti_isa.value)  # before loading anything

    def write(model, state, sha, folder):
        written = []
        for fmt in formats:
            if fmt == "onnx":
                latents, images = _variant_data(model, state, data_dir) if fp16 or int8 else (None, None)
                written += export_onnx(model, state, sha, folder, opset) + export_decoder_variants(
                    folder, fp16=fp16, int8=int8, latents=latents, model=model, test_images=images)
            elif fmt == "pt2":
                written += export_pt2(model, state, sha, folder)
            elif fmt == "aoti":
                written += export_aoti(model, state, sha, folder, aoti_isa.value)
            else:
                written += export_torchscript(model, state, sha, folder)
        return written

    _export(checkpoint, out_dir, write, data_dir, quiet,
            f"vae-export sample --model {out_dir / 'decoder.onnx'} -n 64 --out samples.png" if "onnx" in formats
            else f"vae-export parity {checkpoint} {out_dir}")


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
    """Legacy: export encoder.torchscript and decoder.torchscript (torch.jit is deprecated upstream; prefer
    `vae-export export --format pt2,aoti`), then prove parity with eager."""
    from ..export import export_torchscript

    _export(checkpoint, out_dir, lambda model, state, sha, folder: export_torchscript(model, state, sha, folder),
            data_dir, quiet, f"vae-export parity {checkpoint} {out_dir}")


def _export(checkpoint: Path, out_dir: Path, write, data_dir, quiet: bool, next_command: str) -> None:
    """Export into a staging folder, prove parity there, and only then move the files into out_dir:
    a failed export never replaces a good one."""
    from ..checkpoint import load_model
    from ..export import MANIFEST, PRODUCER, earlier_exports, write_manifest
    from ..files import OwnedDir, check_output, made_dir, sha256_file
    from ..parity import check_parity

    check_output(out_dir, folder=True, inputs=(checkpoint,))
    folder = OwnedDir(out_dir, PRODUCER)
    earlier = set() if folder.ledger() else earlier_exports(out_dir)  # an export from before the ledger: by its sha256s
    folder.check([MANIFEST], adopt=earlier)
    model, state = load_model(checkpoint)
    images, name = _real_images(model, state, data_dir)
    with made_dir(out_dir), folder.rebuild(adopt=earlier, remove_stale=False) as stage:   # only our files are replaced; a failure leaves no new empty folder
        written = write(model, state, sha256_file(checkpoint), stage)
        rows = _parity(lambda: check_parity(model, [w.path for w in written], images=images, images_name=name), quiet)
        sizes = {w.path.name: w.bytes for w in written}
    folder.record([write_manifest(out_dir)])
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
    directory: Annotated[Path, typer.Argument(help="Folder holding exported .onnx/.pt2/.aoti.pt2/.torchscript files.")],
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Absolute tolerance for every row, on the max error (lossy files are otherwise bounded on the mean) [default: per backend].")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative tolerance for every row [default: per backend].")] = None,
    provider: Annotated[ParityProvider, typer.Option(help="ONNX Runtime providers to check; all = those that run here.")] = ParityProvider.cpu,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Also write every row as JSON.")] = None,
    quiet: Quiet = False,
):
    """Check every artifact in DIRECTORY against the eager model rebuilt from CHECKPOINT."""
    from ..checkpoint import load_model
    from ..files import check_output, sha256_file
    from ..parity import artifacts_in, check_exported_from, check_parity

    if report:
        check_output(report, inputs=(checkpoint, directory), option="--report")
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
    """', max |diff| ... vs fp32, test loss +x nats/image' for a reduced-precision decoder (or decoder.onnx's
    OpenVINO bf16 precision), else ''."""
    if path.suffix != ".onnx" or (path.name.count(".") < 2 and path.name != "decoder.onnx"):
        return ""
    from ..runtime import read_metadata

    meta = read_metadata(path)
    error = meta.get("error_vs_fp32") or meta.get("openvino_bf16") or {}
    if not error:
        return ""
    cost = error.get("test_loss_cost_nats")
    return (("  OpenVINO bf16:" if "precision" in error else " ")
            + f" max |diff| {error.get('max_abs', float('nan')):.1e}, mean {error.get('mean_abs', float('nan')):.1e} vs fp32"
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


