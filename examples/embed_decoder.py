"""Use a vae-export decoder in your own app: numpy + onnxruntime only (no torch, no vae-export).

    python examples/embed_decoder.py artifacts/mlp/decoder.onnx samples.png
"""
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

model = Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/mlp/decoder.onnx")
meta = json.loads(model.with_name("decoder.json").read_text())       # the sidecar: same as the ONNX metadata
session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

z = np.random.default_rng(0).standard_normal((64, meta["latent_dim"]), dtype=np.float32)
images = session.run(["sample"], {"latent_sample": z})[0]            # (64, C, H, W) in [0, 1]

c, h, w = meta["image_shape"]                                          # c = 1 (grey) or 3 (RGB)
tiles = (images * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1).reshape(8, 8, h, w, c)
grid = tiles.transpose(0, 2, 1, 3, 4).reshape(8 * h, 8 * w * c)      # 8 x 8 tiles -> rows of pixels


def png(rows_of_pixels: np.ndarray, channels: int) -> bytes:          # 8-bit grey or RGB PNG, stdlib only
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + row.tobytes() for row in rows_of_pixels)
    colour_type = 2 if channels == 3 else 0
    header = struct.pack(">IIBBBBB", rows_of_pixels.shape[1] // channels, rows_of_pixels.shape[0], 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


Path(sys.argv[2] if len(sys.argv) > 2 else "samples.png").write_bytes(png(grid, c))
print(f"{meta['preset']} decoder, latent_dim {meta['latent_dim']}, test loss {meta['test_loss']:.1f}: wrote 64 samples")
