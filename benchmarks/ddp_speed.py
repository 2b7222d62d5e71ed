"""Data-parallel training against one process, on this machine's CPU: the same run (global batch, lr,
seed, epochs) as 1 process with 1 thread, 1 process with N threads, and `vae-export train --nproc N`
(N Gloo processes of 1 thread each, torchrun's default). Prints training images/s and the losses.

    python benchmarks/ddp_speed.py                  # mlp, 3 epochs of 20,000 images, N = 2
    python benchmarks/ddp_speed.py --nproc 4 --batch-size 512 --limit 60000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(label: str, extra: list[str], threads: int, args: argparse.Namespace, folder: Path) -> None:
    out = folder / label.replace(" ", "-")
    cmd = [sys.executable, "-m", "vae_export", "train", "--device", "cpu", "--preset", args.preset, "-q",
           "--epochs", str(args.epochs), "--limit", str(args.limit), "--batch-size", str(args.batch_size),
           "--out", str(out), *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(m["train_samples_per_s"] for m in metrics[1:] or metrics)   # the first epoch warms up
    last = metrics[-1]
    print(f"{label:<22} {rates[len(rates) // 2]:>10,.0f} {last['train_loss']:>11.2f} {last['test_loss']:>10.2f} {wall:>8.1f}",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mlp")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch, the same in every row")
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args()
    n = args.nproc
    print(f"{args.preset}, {args.epochs} epochs of {args.limit} images, global batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs (shared machines: compare rows of one run only)")
    print(f"{'':<22} {'train img/s':>10} {'train loss':>11} {'test loss':>10} {'wall s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        run("1 process, 1 thread", [], 1, args, Path(tmp))
        run(f"1 process, {n} threads", [], n, args, Path(tmp))
        run(f"{n} processes (DDP)", ["--nproc", str(n)], 1, args, Path(tmp))


if __name__ == "__main__":
    main()
