"""The `vae-export` command line. It only parses, validates and calls library functions.

Exit codes: 0 ok; 1 a runtime or data failure (one line on stderr); 2 a usage error; 130 on Ctrl-C.
Data goes to stdout; progress and diagnostics go to stderr.

    vae-export train --preset mlp --epochs 10 --out runs/mlp
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from .config import PRESETS
from .errors import VaeExportError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

Preset = Enum("Preset", {name.replace("-", "_"): name for name in PRESETS}, type=str)


class Device(str, Enum):
    """Where to run: training (--device) and onnxruntime (--provider) alike."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Dataset(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"


class Likelihood(str, Enum):
    bernoulli = "bernoulli"
    gaussian = "gaussian"


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


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final result.")]


@command
def train(
    preset: Annotated[Preset, typer.Option(help="Architecture preset.")] = Preset.mlp,
    epochs: Annotated[int, typer.Option(min=1, help="Total epochs to reach (also with --resume).")] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate (> 0).")] = 1e-3,
    latent_dim: Annotated[Optional[int], typer.Option(min=1, help="Override the preset's latent size.")] = None,
    beta: Annotated[Optional[float], typer.Option(min=0.0, help="KL weight (1 = the ELBO).")] = None,
    likelihood: Annotated[Optional[Likelihood], typer.Option(help="Override the preset's likelihood.")] = None,
    dataset: Annotated[Dataset, typer.Option()] = Dataset.mnist,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root [default: $VAE_EXPORT_DATA or ~/.cache/vae-export/data].")] = None,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when torch sees a GPU.")] = Device.auto,
    seed: Annotated[int, typer.Option()] = 1,
    patience: Annotated[Optional[int], typer.Option(min=1, help="Stop after N epochs without a better test loss.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N images of each split.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder [default: runs/PRESET].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
    quiet: Quiet = False,
):
    """Train a VAE; writes checkpoint.pt, metrics.jsonl and figures into --out after every epoch."""
    from training.train import TrainSettings, train as run_training  # torch loads only for commands that need it

    from .config import make_config
    from .progress import TrainProgress

    config = make_config(preset.value, latent_dim=latent_dim, beta=beta,
                         likelihood=likelihood.value if likelihood else None)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, dataset=dataset.value,
                             patience=patience, limit=limit)
    out_dir = out_dir or Path("runs") / preset.value
    progress = TrainProgress(err, epochs, quiet)
    with progress:
        metrics = run_training(config, settings, out_dir, data_dir=data_dir, device=device.value, resume=resume,
                               on_batch=progress.batch, on_epoch=progress.epoch)
    if not metrics:
        raise VaeExportError(f"no epoch was trained in {out_dir}")
    last = metrics[-1]
    out.print(f"{out_dir / 'checkpoint.pt'}: epoch {last['epoch']}, test loss {last['test_loss']:.2f} nats/image "
              f"(recon {last['test_recon']:.2f}, KL {last['test_kl']:.2f}), {sum(m['seconds'] for m in metrics):.1f} s training")
    if not quiet:
        err.print(f"next: vae-export onnx {out_dir / 'checkpoint.pt'} --out {out_dir / 'export'}")


class ParityProvider(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    all = "all"


Checkpoint = Annotated[Path, typer.Argument(help="A checkpoint.pt written by `vae-export train`.")]
ExportDir = Annotated[Path, typer.Option("--out", help="Folder for the exported files.")]


@command
def onnx(
    checkpoint: Checkpoint,
    out_dir: ExportDir = Path("export"),
    opset: Annotated[int, typer.Option(min=18, max=23, help="ONNX opset (18+: the torch.export-based exporter's range).")] = 18,
    fp16: Annotated[bool, typer.Option(help="Also write decoder.fp16.onnx (half-precision math, float32 I/O).")] = False,
    int8: Annotated[bool, typer.Option(help="Also write decoder.int8.onnx (dynamically quantized weights).")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
    quiet: Quiet = False,
):
    """Export encoder.onnx and decoder.onnx (+ decoder.json sidecar), then prove parity with eager."""
    from .export import export_decoder_variants, export_onnx

    _export(checkpoint, out_dir, lambda model, state, sha, folder: export_onnx(model, state, sha, folder, opset)
            + export_decoder_variants(folder, fp16=fp16, int8=int8), data_dir, quiet,
            f"vae-export sample --model {out_dir / 'decoder.onnx'} -n 64 --out samples.png")


@command
def torchscript(checkpoint: Checkpoint, out_dir: ExportDir = Path("export"),
                data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, for parity on real test images.")] = None,
                quiet: Quiet = False):
    """Export encoder.torchscript and decoder.torchscript, then prove parity with eager."""
    from .export import export_torchscript

    _export(checkpoint, out_dir, lambda model, state, sha, folder: export_torchscript(model, state, sha, folder),
            data_dir, quiet, f"vae-export parity {checkpoint} {out_dir}")


def _export(checkpoint: Path, out_dir: Path, write, data_dir, quiet: bool, next_command: str) -> None:
    """Export into a staging folder, prove parity there, and only then move the files into out_dir:
    a failed export never replaces a good one."""
    from .checkpoint import load_model
    from .export import write_manifest
    from .files import sha256_file, staged_dir
    from .parity import check_parity, real_images

    model, state = load_model(checkpoint)
    images = real_images(state.get("settings", {}).get("dataset", "mnist"), data_dir)
    with staged_dir(out_dir) as stage:
        written = write(model, state, sha256_file(checkpoint), stage)
        rows = _parity(lambda: check_parity(model, [w.path for w in written], images=images), quiet)
        sizes = {w.path.name: w.bytes for w in written}
    write_manifest(out_dir)
    for w in written:
        out.print(f"{out_dir / w.path.name}  {sizes[w.path.name] / 1e6:.2f} MB  {w.seconds:.1f} s")
    if not quiet:
        err.print(f"parity: {len(rows)} checks passed" + ("" if images is not None else " (random inputs only: no test images found)"))
        err.print(f"next: {next_command}")


@command
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
    from .checkpoint import load_model
    from .parity import artifacts_in, check_parity, real_images

    model, state = load_model(checkpoint)
    paths = artifacts_in(directory)
    images = real_images(state.get("settings", {}).get("dataset", "mnist"), data_dir)
    rows = _parity(lambda: check_parity(model, paths, provider=provider.value, images=images, atol=atol, rtol=rtol),
                   quiet, report)
    out.print(f"parity: {len(rows)} checks passed for {len(paths)} artifacts"
              + ("" if images is not None else " (random inputs only: no test images found)"))


def _parity(check, quiet: bool, report: Path | None = None):
    """Run a parity check; print its table (all rows, or only the failing ones when quiet) and raise on failure."""
    from .errors import ParityError
    from .parity import print_table

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
        from .files import write_json

        write_json(report, [r.as_dict() for r in rows])


SHIPPED = Path(__file__).resolve().parents[1] / "artifacts" / "mlp"


class OutDtype(str, Enum):
    float32 = "float32"
    uint8 = "uint8"


def _shipped(model: Optional[Path], name: str) -> Path:
    """--model, or the model shipped in artifacts/ (so sampling works out of the box, offline)."""
    if model is not None:
        return model
    if not (SHIPPED / name).is_file():
        raise VaeExportError(f"no --model given and no shipped model at {SHIPPED / name} (run `make artifacts`)")
    return SHIPPED / name


@command
def sample(
    out_path: Annotated[Path, typer.Option("--out", help=".npy (streamed, any N) or .png (an image grid).")],
    model: Annotated[Optional[Path], typer.Option(help="decoder.onnx [default: the shipped artifacts/mlp model].")] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of samples (.png: the grid holds all of them).")] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 8192,
    seed: Annotated[int, typer.Option(help="Same seed, same samples, on every provider and batch size.")] = 0,
    provider: Annotated[Device, typer.Option(help="cuda fails clearly if CUDA cannot really run; auto falls back.")] = Device.cpu,
    dtype: Annotated[OutDtype, typer.Option(help="For .npy: float32 in [0, 1], or uint8 in 0..255.")] = OutDtype.float32,
    interpolate: Annotated[Optional[tuple[int, int]], typer.Option(help="Decode -n steps between the latents of two seeds.")] = None,
    manifold: Annotated[bool, typer.Option(help="Decode the 30x30 quantile grid of a 2-D latent model.")] = False,
    quiet: Quiet = False,
):
    """Sample images from an ONNX decoder through onnxruntime (CPU or CUDA)."""
    from . import sampling
    from .progress import SampleProgress
    from .runtime import Decoder

    sampling.check_out_path(out_path)
    decoder = Decoder(_shipped(model, "decoder.onnx"), provider=provider.value)
    if interpolate or manifold:
        z = sampling.manifold(decoder) if manifold else sampling.interpolation_latents(decoder, interpolate, n)
        sampling.decode_to_file(decoder, z, out_path, dtype.value, nrow=30 if manifold else n)
        out.print(f"{out_path}: {len(z)} images ({'manifold' if manifold else 'interpolation'}), provider {decoder.provider}")
        return
    with SampleProgress(err, n, disable=quiet or n < 100_000) as progress:
        stats = sampling.sample_to_file(decoder, out_path, n, seed=seed, batch_size=batch_size, dtype=dtype.value,
                                        on_batch=progress.advance)
    out.print(f"{out_path}: {n} samples, provider {stats.provider}, {stats.seconds:.2f} s, {stats.per_second:,.0f} samples/s")


Images = Annotated[list[Path], typer.Argument(help="Images: .npy arrays (N, 28, 28) or (N, 1, 28, 28), float in [0, 1] or uint8; or 28x28 grayscale .png files.")]


@command
def encode(
    images: Images,
    out_path: Annotated[Path, typer.Option("--out", help=".npz with arrays mu and logvar.")],
    model: Annotated[Optional[Path], typer.Option(help="encoder.onnx [default: the shipped artifacts/mlp model].")] = None,
    provider: Annotated[Device, typer.Option()] = Device.cpu,
):
    """Encode images to latent means and log-variances through the ONNX encoder."""
    import numpy as np

    from .files import atomic_open
    from .runtime import Encoder
    from .sampling import read_images

    if out_path.suffix != ".npz":
        raise VaeExportError(f"--out must end in .npz, got {out_path.name!r}")
    x = read_images(images)
    mu, logvar = Encoder(_shipped(model, "encoder.onnx"), provider=provider.value).encode(x)
    with atomic_open(out_path) as f:
        np.savez(f, mu=mu, logvar=logvar)
    out.print(f"{out_path}: mu and logvar of {len(x)} images, latent_dim {mu.shape[1]}")


@command
def reconstruct(
    images: Images,
    out_path: Annotated[Path, typer.Option("--out", help=".png (originals above reconstructions) or .npy.")],
    model_dir: Annotated[Optional[Path], typer.Option("--models", help="Folder with encoder.onnx and decoder.onnx [default: shipped].")] = None,
    provider: Annotated[Device, typer.Option()] = Device.cpu,
):
    """Encode images and decode their latent means: x -> mu -> x' through both ONNX files."""
    import numpy as np

    from . import sampling
    from .runtime import Decoder, Encoder

    sampling.check_out_path(out_path)
    x = sampling.read_images(images)
    folder = model_dir or SHIPPED
    mu, _ = Encoder(folder / "encoder.onnx", provider=provider.value).encode(x)
    decoder = Decoder(folder / "decoder.onnx", provider=provider.value)
    if out_path.suffix == ".png":
        recon = decoder.decode(mu)
        sampling.save_png_grid(np.concatenate([x, recon]), out_path, nrow=len(x))
    else:
        sampling.decode_to_file(decoder, mu, out_path)
    out.print(f"{out_path}: {len(x)} reconstructions, provider {decoder.provider}")


@command
def bench(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="checkpoint.pt [default: the shipped artifacts/mlp model].")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated decode/encode batch sizes.")] = "1,64,1024,8192",
    providers: Annotated[str, typer.Option(help="Comma-separated: cpu, cuda (cuda rows only where CUDA really runs).")] = "cpu,cuda",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per backend and batch size (after warm-up).")] = 20,
    compile: Annotated[bool, typer.Option(help="Include torch.compile (slow to compile on small CPUs).")] = True,
    train: Annotated[bool, typer.Option(help="Include training throughput per preset.")] = True,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root for real images.")] = None,
    report: Annotated[Optional[Path], typer.Option("--out", help="Write the full report as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a throughput plot (.png).")] = None,
    quiet: Quiet = False,
):
    """Decode/encode latency and throughput per backend (eager, TorchScript, torch.compile, ONNX Runtime
    CPU/CUDA), every output checked against eager first; training throughput per preset."""
    from .bench import run_bench
    from .bench_report import plot_report, print_report
    from .files import write_json

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--batch-sizes must be integers separated by commas, got {batch_sizes!r}") from None
    result = run_bench(_shipped(checkpoint, "checkpoint.pt"), sizes,
                       [p.strip() for p in providers.split(",")], repeats, train,
                       log=None if quiet else (lambda line: err.print(line, markup=False)),
                       compile=compile, data_dir=data_dir)
    print_report(result, out)
    if report:
        write_json(report, result)
    if plot:
        plot_report(result, plot)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
