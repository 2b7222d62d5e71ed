"""Sampling throughput and batch-1 latency of the ONNX decoder against eager PyTorch.

    python benchmarks/sample_speed.py                       # the shipped artifacts/mlp model, 1M samples
    python benchmarks/sample_speed.py --n 200000 --model-dir runs/mlp/export --checkpoint runs/mlp/checkpoint.pt

Measures, on this machine:
1. `vae-export sample -n N --batch-size 8192 --dtype uint8 --out x.npy`, end to end (a fresh process);
2. the same with float32 output;
3. the baseline: a straightforward eager PyTorch loop drawing latents with numpy, decoding batch by
   batch and writing into a memory-mapped float32 .npy (in this process, so no import time counted);
4. batch-1 latency: runtime.Decoder.decode vs the eager decoder, median of 2000 calls.
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

from vae_export.checkpoint import load_model  # noqa: E402
from vae_export.runtime import Decoder  # noqa: E402


def cli_sample(model: Path, n: int, dtype: str, out: Path) -> float:
    exe = Path(sys.executable).parent / "vae-export"
    t0 = time.perf_counter()
    subprocess.run([exe, "sample", "--model", model, "-n", str(n), "--batch-size", "8192", "--dtype", dtype,
                    "--out", out, "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - t0


def eager_loop(decoder: torch.nn.Module, latent_dim: int, n: int, out: Path, batch_size: int = 8192) -> float:
    """What a user would write without this tool: numpy latents, torch decode, memmap writes."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, 1, 28, 28))
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            z = rng.standard_normal((min(batch_size, n - i), latent_dim), dtype=np.float32)
            arr[i: i + len(z)] = decoder(torch.from_numpy(z)).numpy()
    arr.flush()
    del arr
    return time.perf_counter() - t0


def latency(fn, z, calls: int = 2000) -> float:
    for _ in range(50):
        fn(z)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(z)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--model-dir", type=Path, default=REPO / "artifacts" / "mlp")
    p.add_argument("--checkpoint", type=Path, default=None, help="[default: MODEL_DIR/checkpoint.pt]")
    args = p.parse_args()
    model, _ = load_model(args.checkpoint or args.model_dir / "checkpoint.pt")
    onnx_path = args.model_dir / "decoder.onnx"
    n = args.n
    print(f"machine: {torch.get_num_threads()} torch threads; model {onnx_path}; n = {n}")
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        s8 = cli_sample(onnx_path, n, "uint8", Path(tmp) / "u8.npy")
        print(f"vae-export sample --dtype uint8   : {s8:6.2f} s  {n / s8:10,.0f} samples/s (end to end, process start included)")
        (Path(tmp) / "u8.npy").unlink()
        s32 = cli_sample(onnx_path, n, "float32", Path(tmp) / "f32.npy")
        print(f"vae-export sample --dtype float32 : {s32:6.2f} s  {n / s32:10,.0f} samples/s")
        (Path(tmp) / "f32.npy").unlink()
        base = eager_loop(model.decoder, model.config.latent_dim, n, Path(tmp) / "eager.npy")
        print(f"eager PyTorch loop, float32 .npy  : {base:6.2f} s  {n / base:10,.0f} samples/s (in process)")
        print(f"float32: {base / s32:.2f}x the eager loop's throughput")
    z = np.random.default_rng(0).standard_normal((1, model.config.latent_dim), dtype=np.float32)
    ort_decoder = Decoder(onnx_path)
    with torch.inference_mode():
        t_ort = latency(ort_decoder.decode, z)
        zt = torch.from_numpy(z)
        t_eager = latency(model.decoder, zt)
    print(f"batch-1 latency: runtime.Decoder.decode {t_ort * 1e6:.1f} us, eager {t_eager * 1e6:.1f} us "
          f"({t_ort / t_eager:.2f} of eager)")


if __name__ == "__main__":
    main()
