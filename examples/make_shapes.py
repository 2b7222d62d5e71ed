"""Make a folder of small colour images to train on: a random ellipse or rectangle on a dark background,
half PNG, half JPEG, in two subfolders (torchvision ImageFolder's layout; vae-export ignores the labels).

    python examples/make_shapes.py runs/shapes64 --n 3000 --size 64
    vae-export train --dataset folder:runs/shapes64 --preset conv-large --epochs 5 --out runs/shapes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_shapes(folder: Path, n: int = 300, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """Write n images of `size` (width, height) into folder/round and folder/square."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        sub = Path(folder) / ("round" if k % 2 else "square")
        sub.mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 60, 3)))
        x, y = (int(v) for v in rng.integers(0, size[0] // 2, 2))
        r = int(rng.integers(size[0] // 4, size[0] // 2))
        colour = tuple(int(v) for v in rng.integers(80, 256, 3))
        draw = ImageDraw.Draw(im)
        (draw.ellipse if k % 2 else draw.rectangle)([x, y, x + r, y + r], fill=colour)
        im.save(sub / f"{k:05d}.{'png' if k % 4 < 2 else 'jpg'}")
    return Path(folder)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64, help="width and height in pixels")
    args = parser.parse_args()
    make_shapes(args.folder, args.n, (args.size, args.size))
    print(f"{args.folder}: {args.n} images of {args.size}x{args.size}")
