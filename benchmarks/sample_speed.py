"""Is the exported path the fastest way to get samples? The sampler against decode alone, int8 against
fp32, and batch-1 latency against eager PyTorch, in one run on this machine.

    VAE_EXPORT_DATA=/work/shared/data python benchmarks/sample_speed.py            # shipped mlp, 2M samples
    python benchmarks/sample_speed.py --n 500000 --checkpoint runs/mlp/checkpoint.pt

Measures:
1. the CPU's matrix features (int8: AVX512-VNNI / AVX-VNNI / AMX-INT8; bf16: AVX512-BF16 / AMX-BF16);
2. decode alone, batch 8192: the runtime's multi-threaded session, float32 out, fp32 and int8 (both
   exported here from the checkpoint, int8 calibrated on training images), and eager PyTorch fp32
   and bf16 for reference; 5 warm-up then 20 timed calls on N(0, I) latents, median;
3. `vae-export sample -n N --batch-size 8192 --dtype uint8 --precision P`, end to end as a fresh
   process (start-up included), against decode alone at the same batch size and precision;
4. batch-1 latency: runtime.Decoder.decode with default settings against the checkpoint's eager
   decoder with torch's default threads, 400 warm-up then 4000 timed calls, median;
5. where one intra-op thread stops beating one per core (runtime.SMALL_BATCH), batch by batch;
6. with OpenVINO installed (the `runtimes` extra): its decode alone at fp32 (f32 hint), int8 and bf16,
   and `sample --provider openvino --precision int8` end to end against onnxruntime int8, the two
   interleaved over 3 rounds (median), target >= 1.15x.
The cores may be shared: compare only the figures of one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vae_export.training.data import load_images, resolve_data_dir, to_float  # noqa: E402
from vae_export import runtime  # noqa: E402
from vae_export.checkpoint import load_model  # noqa: E402
from vae_export.export import calibration_latents, export_decoder_variants, export_onnx  # noqa: E402

BATCH = 8192
FEATURES = ("avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")


def cpu_features() -> list[str]:
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return [f for f in FEATURES if f in flags]


def median_time(call, warmup: int, calls: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cli_sample(folder: Path, n: int, precision: str, out: Path, provider: str = "cpu") -> float:
    exe = Path(sys.executable).parent / "vae-export"
    t0 = time.perf_counter()
    subprocess.run([exe, "sample", "--model", folder / "decoder.onnx", "--precision", precision, "-n", str(n), "--provider", provider,
                    "--batch-size", str(BATCH), "--dtype", "uint8", "--out", out, "--quiet"], check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    out.unlink()
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2_000_000)
    p.add_argument("--checkpoint", type=Path, default=REPO / "artifacts" / "mlp" / "checkpoint.pt")
    args = p.parse_args()
    model, state = load_model(args.checkpoint)
    features = cpu_features()
    print(f"cpu: {runtime.physical_cores()} usable cores; matrix features: {', '.join(features) or 'none'} "
          f"(int8 units: {'yes' if {'avx512_vnni', 'avx_vnni', 'amx_int8'} & set(features) else 'no'}, "
          f"AMX: {'yes' if 'amx_int8' in features else 'no'}); torch {torch.get_num_threads()} threads")
    z = runtime.latent_slice(0, 0, BATCH, model.config.latent_dim)
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        folder = Path(tmp)
        export_onnx(model, state, "bench", folder)
        train = to_float(load_images("mnist", resolve_data_dir(), train=True, download=False)[:1000])
        export_decoder_variants(folder, int8=True, latents=calibration_latents(model, train))
        decode = {}
        for precision in ("fp32", "int8"):
            session = runtime.Decoder(folder, precision=precision).session_for(BATCH)
            decode[precision] = BATCH / median_time(lambda: session.run(["sample"], {"latent_sample": z}), 5, 20)
            print(f"decode alone {precision}, batch {BATCH}: {decode[precision]:12,.0f} samples/s "
                  f"(onnxruntime, {session.get_session_options().intra_op_num_threads} threads)")
        zt = torch.from_numpy(z)
        with torch.inference_mode():
            eager = BATCH / median_time(lambda: model.decoder(zt), 5, 20)
            with torch.autocast("cpu", torch.bfloat16):
                eager_bf16 = BATCH / median_time(lambda: model.decoder(zt), 5, 20)
        print(f"decode alone eager fp32 / bf16, batch {BATCH}: {eager:,.0f} / {eager_bf16:,.0f} samples/s (reference)")
        end_to_end = {}
        for precision in ("fp32", "int8"):
            seconds = cli_sample(folder, args.n, precision, folder / "s.npy")
            end_to_end[precision] = args.n / seconds
            print(f"vae-export sample -n {args.n} --dtype uint8 --precision {precision}: {seconds:6.2f} s "
                  f"{end_to_end[precision]:12,.0f} samples/s end to end = {end_to_end[precision] / decode[precision]:.0%} "
                  f"of decode alone (target >= 85%)")
        print(f"int8 end to end = {end_to_end['int8'] / end_to_end['fp32']:.2f}x the fp32 end to end "
              f"(target >= 3x where the CPU has int8 units)")
        decoder = runtime.Decoder(folder / "decoder.onnx")
        z1 = z[:1]
        with torch.inference_mode():
            t_ort = median_time(lambda: decoder.decode(z1), 400, 4000)
            t_eager = median_time(lambda: model.decoder(zt[:1]), 400, 4000)
        print(f"batch-1 latency: runtime.Decoder.decode {t_ort * 1e6:.1f} us, eager {t_eager * 1e6:.1f} us "
              f"= {t_ort / t_eager:.2f}x eager (target <= 0.6x)")
        crossover(folder)
        openvino(folder, z, args.n, decode)


def openvino(folder: Path, z: np.ndarray, n: int, decode: dict) -> None:
    """OpenVINO's decode alone and its end-to-end int8 sampling against onnxruntime's (section 6)."""
    try:
        import openvino as ov
    except ImportError:
        print("openvino: not installed (pip install 'vae-export[runtimes]'): section 6 skipped")
        return
    for precision in ("fp32", "int8", "bf16"):
        decoder = runtime.Decoder(folder, provider="openvino", precision=precision)
        rate = BATCH / median_time(lambda: decoder.decode(z), 5, 20)
        print(f"decode alone openvino {precision}, batch {BATCH}: {rate:12,.0f} samples/s = "
              f"{rate / decode['fp32']:.2f}x onnxruntime fp32 ({decoder.provider}, OpenVINO {ov.__version__})")
    seconds: dict[str, list[float]] = {"cpu": [], "openvino": []}
    for _ in range(3):                                    # interleaved: both see the same machine load
        for provider in seconds:
            seconds[provider].append(cli_sample(folder, n, "int8", folder / "s.npy", provider))
    ort_s, ov_s = (float(np.median(seconds[p])) for p in ("cpu", "openvino"))
    print(f"vae-export sample -n {n} --dtype uint8 --precision int8: onnxruntime {ort_s:.2f} s, "
          f"--provider openvino {ov_s:.2f} s (medians of 3, interleaved) = {ort_s / ov_s:.2f}x (target >= 1.15x)")


def crossover(folder: Path) -> None:
    """Latency of a one-thread and a one-per-core session per batch size: where the second wins."""
    cores = runtime.physical_cores()
    one, many = (runtime.Decoder(folder / "decoder.onnx", threads=t) for t in (1, cores))
    line, first_win = [], None
    for b in (1, 8, 16, 32, 64, 128, 256, 512, 1024):
        z = runtime.latent_slice(1, 0, b, one.latent_dim)
        t1, tn = (median_time(lambda d=d: d.decode(z), 50, 300) for d in (one, many))
        line.append(f"{b}: {t1 * 1e6:.0f}/{tn * 1e6:.0f}")
        if first_win is None and tn < 0.95 * t1:
            first_win = b
    print(f"crossover, us per call with 1/{cores} threads: {', '.join(line)}; {cores} threads first win by 5% at "
          f"batch {first_win} (runtime.SMALL_BATCH = {runtime.SMALL_BATCH})")


if __name__ == "__main__":
    main()
