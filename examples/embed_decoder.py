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
images = session.run(["sample"], {"latent_sample": z})[0]            # (64, 1, 28, 28) in [0, 1]

h, w = meta["image_shape"][1:]
tiles = (images[:, 0] * 255 + 0.5).astype(np.uint8).reshape(8, 8, h, w)
grid = tiles.transpose(0, 2, 1, 3).reshape(8 * h, 8 * w)              # 8 x 8 tiles -> one image


def png(gray: np.ndarray) -> bytes:                                     # 8-bit grayscale PNG, stdlib only
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + row.tobytes() for row in gray)
    header = struct.pack(">IIBBBBB", gray.shape[1], gray.shape[0], 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


Path(sys.argv[2] if len(sys.argv) > 2 else "samples.png").write_bytes(png(grid))
print(f"{meta['preset']} decoder, latent_dim {meta['latent_dim']}, test loss {meta['test_loss']:.1f}: wrote 64 samples")
