"""`vae-export sample`, `encode` and `reconstruct`: the torch-free runtime from the command line."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .common import Device, Quiet, command, err, out, shipped, shipped_dir


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    bf16 = "bf16"


class SampleProvider(str, Enum):
    """onnxruntime's devices, or OpenVINO's CPU plugin (the optional `runtimes` extra)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    openvino = "openvino"


class OutDtype(str, Enum):
    float32 = "float32"
    uint8 = "uint8"


@command
def sample(
    out_path: Annotated[Path, typer.Option("--out", help=".npy (streamed, any N) or .png (an image grid).")],
    model: Annotated[Optional[Path], typer.Option(help="decoder.onnx, or an export folder (the --precision variant is picked from it) [default: the shipped artifacts/mlp model].")] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of samples (.png: the grid holds all of them).")] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 8192,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same samples, on every provider and batch size.")] = 0,
    provider: Annotated[SampleProvider, typer.Option(help="cuda fails clearly if CUDA cannot really run; auto falls back; openvino: OpenVINO's CPU plugin, precision explicit.")] = SampleProvider.cpu,
    dtype: Annotated[OutDtype, typer.Option(help="For .npy: float32 in [0, 1], or uint8 in 0..255.")] = OutDtype.float32,
    precision: Annotated[Precision, typer.Option(help="Decoder variant in the --model folder: decoder.onnx, decoder.fp16.onnx or decoder.int8.onnx (int8: fastest on CPUs with VNNI/AMX); bf16 (openvino only): decoder.onnx computed in bf16.")] = Precision.fp32,
    interpolate: Annotated[Optional[tuple[int, int]], typer.Option(help="Decode -n steps between the latents of two seeds.")] = None,
    manifold: Annotated[bool, typer.Option(help="Decode the 30x30 quantile grid of a 2-D latent model.")] = False,
    shard: Annotated[Optional[str], typer.Option(metavar="K/N", help="Write only part K of N of the -n samples (.npy); `merge` joins the parts.")] = None,
    quiet: Quiet = False,
):
    """Sample images from an ONNX decoder through onnxruntime (CPU or CUDA) or OpenVINO (CPU)."""
    from .. import sampling, shards
    from ..progress import SampleProgress
    from ..runtime import Decoder

    sampling.check_out_path(out_path, inputs=(model,))
    if out_path.suffix == ".png" and dtype != OutDtype.float32:
        raise UsageError("--dtype applies to .npy output; a .png grid is always 8-bit")
    if interpolate and min(interpolate) < 0:
        raise UsageError(f"--interpolate seeds must be >= 0, got {interpolate[0]} {interpolate[1]}")
    part = None if shard is None else shards.parse_shard(shard)   # "" (an unset variable) is refused, not the whole run
    if part and (out_path.suffix != ".npy" or interpolate or manifold):
        raise UsageError("--shard splits a run of random samples written to .npy")
    if precision == Precision.bf16 and provider != SampleProvider.openvino:
        raise UsageError("--precision bf16 needs --provider openvino (onnxruntime has no bf16 CPU kernels)")
    positions = shards.shard_range(n, *part) if part else range(n)
    decoder = Decoder(shipped(model, "decoder.onnx"), provider=provider.value, precision=precision.value)
    if interpolate or manifold:
        steps = 900 if manifold else n
        sampling.check_job_size(out_path, steps, steps, decoder.image_shape, dtype.value)  # before the latents exist
        z = sampling.manifold(decoder) if manifold else sampling.interpolation_latents(decoder, interpolate, n)
        sampling.decode_to_file(decoder, z, out_path, dtype.value, nrow=30 if manifold else n)
        out.print(f"{out_path}: {len(z)} images ({'manifold' if manifold else 'interpolation'}), provider {decoder.provider}")
        return
    count = len(positions)
    with SampleProgress(err, count, disable=quiet or count < 100_000) as progress:
        stats = sampling.sample_to_file(decoder, out_path, n, seed=seed, batch_size=batch_size, dtype=dtype.value,
                                        on_batch=progress.advance, start=positions.start, stop=positions.stop,
                                        part=part)
    where = f" (samples {positions.start}..{positions.stop - 1} of {n}, shard {shard})" if shard else ""
    out.print(f"{out_path}: {count} samples{where}, provider {stats.provider}, {decoder.precision}, {stats.seconds:.2f} s, "
              f"{stats.per_second:,.0f} samples/s")


@command
def merge(
    parts: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="The .npy parts of one run (sample --shard K/N), in any order: they are joined in the order of their samples.")],
    out_path: Annotated[Path, typer.Option("--out", help="The joined .npy, written whole or not at all.")],
):
    """Join sample shards into one .npy, streamed: the same bytes as one unsharded `sample` run. Refuses,
    before writing, parts that do not tile one run (a missing part, another seed, -n, dtype or model)."""
    from ..shards import merge as merge_parts

    merged = merge_parts(parts, out_path)
    out.print(f"{out_path}: {merged.shape[0]} samples {merged.dtype} from {len(parts)} parts, {merged.nbytes:,} bytes")


Images = Annotated[list[Path], typer.Argument(help="Images: .npy/.npz arrays (N, H, W), (N, C, H, W) or (N, H, W, C), uint8 0..255 or float 0..1; or H x W image files (.png .jpg .tif .bmp .webp ...; 1/8/16-bit and float grey, RGB, palette), EXIF-upright (vae_export/images.py lists every accepted format).")]


@command
def encode(
    images: Images,
    out_path: Annotated[Path, typer.Option("--out", help=".npz with arrays mu and logvar.")],
    model: Annotated[Optional[Path], typer.Option(help="encoder.onnx [default: the shipped artifacts/mlp model].")] = None,
    provider: Annotated[Device, typer.Option()] = Device.cpu,
):
    """Encode images to latent means and log-variances through the ONNX encoder."""
    import numpy as np

    from ..files import atomic_open, check_output
    from ..images import read_images
    from ..runtime import Encoder

    check_output(out_path, suffixes=(".npz",), inputs=(*images, model))
    encoder = Encoder(shipped(model, "encoder.onnx"), provider=provider.value)
    x = read_images(images, encoder.image_shape)
    mu, logvar = encoder.encode(x)
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

    from .. import sampling
    from ..images import read_images
    from ..provenance import same_model
    from ..runtime import Decoder, Encoder

    folder = model_dir or shipped_dir()
    sampling.check_out_path(out_path, inputs=(*images, folder / "encoder.onnx", folder / "decoder.onnx"))
    encoder = Encoder(folder / "encoder.onnx", provider=provider.value)
    decoder = Decoder(folder / "decoder.onnx", provider=provider.value)
    same_model([(encoder.path, encoder.metadata), (decoder.path, decoder.metadata)],
               "a reconstruction needs the encoder and decoder of one model")
    x = read_images(images, encoder.image_shape)
    sampling.check_job_size(out_path, 2 * len(x), len(x), decoder.image_shape)
    mu, _ = encoder.encode(x)
    if out_path.suffix == ".png":
        recon = decoder.decode(mu)
        sampling.save_png_grid(np.concatenate([x, recon]), out_path, nrow=len(x))
    else:
        sampling.decode_to_file(decoder, mu, out_path)
    out.print(f"{out_path}: {len(x)} reconstructions, provider {decoder.provider}")


