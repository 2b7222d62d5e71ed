"""Wall time and final test loss of `vae-export train` against pytorch/examples' vae/main.py,
both run end to end as fresh processes on the same machine and data.

    python benchmarks/train_speed.py                         # mlp, 10 epochs, ours and the reference
    python benchmarks/train_speed.py --preset conv --no-reference --precision fp32,bf16
    python benchmarks/train_speed.py --preset conv --epochs 3 --limit 20000 --precision fp32,bf16 --no-reference

With several precisions, each is a separate `vae-export train` run on the same seed and data, so the
train images/s and the final test loss of fp32 and bf16 compare like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mlp")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-reference", action="store_true", help="skip pytorch/examples (mlp only)")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--limit", type=int, default=None, help="first N images of each split (quick runs)")
    args = p.parse_args()
    data = os.environ.get("VAE_EXPORT_DATA", str(REPO.parent / "shared" / "data"))
    bin_dir = Path(sys.executable).parent

    limit = ["--limit", str(args.limit)] if args.limit else []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision.split(","):
            ours_s, _ = timed([str(bin_dir / "vae-export"), "train", "--preset", args.preset, "--epochs",
                               str(args.epochs), "--seed", str(args.seed), "--device", args.device, "--data-dir", data,
                               "--precision", precision, *limit, "--out", f"{tmp}/{precision}", "--quiet"])
            metrics = [json.loads(line) for line in open(f"{tmp}/{precision}/metrics.jsonl")]
            per_epoch = sum(m["seconds"] for m in metrics) / len(metrics)
            rate = sorted(m["train_samples_per_s"] for m in metrics)[len(metrics) // 2]
            print(f"vae-export train --preset {args.preset} --epochs {args.epochs} --precision {precision}"
                  f"{' --limit ' + str(args.limit) if args.limit else ''}: wall {ours_s:.1f} s, {per_epoch:.2f} s/epoch "
                  f"(train+test), {rate:,.0f} train images/s (median epoch), test loss "
                  f"{metrics[-1]['test_loss']:.2f} nats/image, device {metrics[-1]['device']}")
        if args.no_reference or args.preset != "mlp" or args.limit:
            return
        ref_s, log = timed([sys.executable, "benchmarks/reference_vae_main.py", "--epochs", str(args.epochs),
                            "--seed", str(args.seed), "--data-dir", data, "--out", f"{tmp}/ref"])
        ref_loss = float(re.findall(r"Test set loss: ([0-9.]+)", log)[-1])
        print(f"pytorch/examples vae/main.py --epochs {args.epochs}: wall {ref_s:.1f} s, test loss {ref_loss:.2f}")
        print(f"ratio: {ours_s / ref_s:.2f} of the reference's wall time ({ref_s / ours_s:.1f}x faster)")


if __name__ == "__main__":
    main()
