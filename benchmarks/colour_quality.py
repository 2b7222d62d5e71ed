"""Does a model trained with the CLI's defaults keep its images' colours? Writes a folder of colour
images drawn unlike examples/make_shapes.py (1-3 triangles, rings and crosses on a two-colour gradient),
trains `vae-export train --dataset folder:...` for at most a wall-clock budget (SIGTERM at the limit
keeps the last epoch's checkpoint), exports ONNX and reconstructs held-out images (another seed, never
seen in training) through the exported encoder and decoder. Prints PSNR, colour error and channel spread.

    python benchmarks/colour_quality.py --out runs/colour --minutes 5
    python benchmarks/colour_quality.py --out runs/colour-old --minutes 5 -- --likelihood bernoulli

Colour error: mean |chroma(recon) - chroma(x)| over pixels and channels, chroma = a pixel's RGB less
its mean over R, G, B (what a grey reconstruction gets entirely wrong, whatever its brightness).
Channel spread: a pixel's standard deviation over R, G, B, averaged (0 for a grey image).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def gradient_shapes(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: a two-colour linear gradient (vertical or horizontal) under 1-3 shapes
    of random colours: filled triangles, rings and crosses."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    t = np.linspace(0, 1, size)[:, None, None]                       # (H, 1, 1)
    for k in range(n):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        background = (a * (1 - t) + b * t) * np.ones((1, size, 1))    # (H, W, 3)
        if rng.random() < 0.5:
            background = background.transpose(1, 0, 2)
        im = Image.fromarray(background.astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            s = int(rng.integers(size // 5, size // 2))
            x, y = (int(v) for v in rng.integers(0, size - s, 2))
            kind, w = int(rng.integers(3)), max(2, s // 4)
            if kind == 0:
                draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=colour)
            elif kind == 1:
                draw.ellipse([x, y, x + s, y + s], outline=colour, width=max(2, s // 5))
            else:
                draw.rectangle([x + s // 2 - w // 2, y, x + s // 2 + w // 2, y + s], fill=colour)
                draw.rectangle([x, y + s // 2 - w // 2, x + s, y + s // 2 + w // 2], fill=colour)
        out[k] = np.asarray(im)
    return out


def colour_stats(recon: np.ndarray, x: np.ndarray) -> dict[str, float]:
    """recon, x: (N, 3, H, W) in [0, 1]. PSNR (dB, mean over images), colour error, channel spreads."""
    mse = ((recon - x) ** 2).mean(axis=(1, 2, 3))
    chroma_r, chroma_x = recon - recon.mean(1, keepdims=True), x - x.mean(1, keepdims=True)
    return {"psnr_db": float(np.mean(10 * np.log10(1 / np.maximum(mse, 1e-10)))),
            "colour_error": float(np.abs(chroma_r - chroma_x).mean()),
            "channel_spread": float(recon.std(1).mean()), "data_channel_spread": float(x.std(1).mean())}


def write_folder(images: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{k:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the data, the run and the export")
    parser.add_argument("--n", type=int, default=3000, help="training images (the CLI holds out 10%% for its test loss)")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock limit on training")
    parser.add_argument("--preset", default="conv-large")
    parser.add_argument("train_args", nargs="*", help="after --: more `vae-export train` options")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "vae_export"]
    data, run = args.out / "images", args.out / "run"
    write_folder(gradient_shapes(args.n, args.size, seed=0), data)
    held_out = gradient_shapes(args.held_out, args.size, seed=12345).transpose(0, 3, 1, 2) / 255.0  # (N, 3, H, W)

    command = [*cli, "train", "--dataset", f"folder:{data}", "--preset", args.preset, "--out", str(run), *args.train_args]
    print("$", " ".join(command[2:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)    # the last finished epoch's checkpoint stays
        proc.wait()
    seconds = time.perf_counter() - t0
    subprocess.run([*cli, "onnx", str(run / "checkpoint.pt"), "--out", str(run / "export")], check=True)

    from vae_export.runtime import Decoder, Encoder
    mu, _ = Encoder(run / "export" / "encoder.onnx").encode(held_out.astype(np.float32))
    recon = Decoder(run / "export" / "decoder.onnx").decode(mu)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = {**colour_stats(recon.astype(np.float64), held_out), "epochs": len(metrics),
              "train_seconds": round(seconds, 1), "load_average": os.getloadavg()[0],
              "likelihood": json.loads((run / "export" / "decoder.json").read_text())["likelihood"]}
    print(json.dumps(result))
    print(f"held-out PSNR {result['psnr_db']:.2f} dB, colour error {result['colour_error']:.4f}, channel spread "
          f"{result['channel_spread']:.4f} vs the data's {result['data_channel_spread']:.4f}; {result['epochs']} epochs "
          f"in {seconds:.0f} s (load {result['load_average']:.1f})")


if __name__ == "__main__":
    main()
