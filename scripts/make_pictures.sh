#!/usr/bin/env bash
# Regenerates the README's pictures in docs/, each with the command a user would run:
#   docs/samples.png          64 samples of the shipped model (vae-export sample)
#   docs/reconstructions.png  the first 16 MNIST test digits above their reconstructions (vae-export reconstruct)
#   docs/manifold.png         the 2-D latent manifold of a `conv` model (vae-export sample --manifold)
#   docs/loss.png             that conv run's loss curves (written by vae-export train)
#   docs/web.png              the page `vae-export web` builds for that conv model, in headless Chromium
#
#   make pictures        (needs MNIST in $VAE_EXPORT_DATA; the web picture needs node, npm ci and chromium)
#
# The conv model is trained here, briefly, into runs/pictures/conv (8 epochs on the first 15,000 MNIST
# training images: 45 minutes on 2 CPU cores shared with other jobs at load average 10, far less on a
# quiet machine or a GPU); a second run reuses it. The shipped model is never retrained: `make artifacts`
# does that. The pictures are then cut to a few tens of KB each (a palette, the manifold halved).
set -euo pipefail
cd "$(dirname "$0")/.."
VE=.venv/bin/vae-export
PY=.venv/bin/python
out=runs/pictures
mkdir -p "$out"

echo "== samples of the shipped model"
$VE sample -n 64 --seed 0 --out docs/samples.png --quiet

echo "== reconstructions of the first 16 MNIST test digits"
$PY - "$out/digits.npy" <<'EOF'
import sys
import numpy as np
from vae_export.training.data import load_images, resolve_data_dir
images = load_images("mnist", resolve_data_dir(None), train=False, download=False)[:16]  # (16, 1, 28, 28) uint8
np.save(sys.argv[1], images.numpy())
EOF
$VE reconstruct "$out/digits.npy" --out docs/reconstructions.png

echo "== a conv model with a 2-D latent: its manifold and loss curves"
if [ ! -f "$out/conv/checkpoint.pt" ]; then
  $VE train --preset conv --epochs 8 --limit 15000 --seed 0 --out "$out/conv"
fi
$VE onnx "$out/conv/checkpoint.pt" --out "$out/conv/export" --quiet
$VE sample --model "$out/conv/export/decoder.onnx" --manifold --out docs/manifold.png --quiet
cp "$out/conv/loss.png" docs/loss.png

echo "== the web page of that model, in headless Chromium"
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ] && command -v node > /dev/null && [ -d node_modules/playwright-core ]; then
  $VE web "$out/conv/export" --out "$out/site" --serve --port 0 --quiet > "$out/web.txt" &
  server=$!
  trap 'kill "$server" 2> /dev/null || true' EXIT
  for _ in $(seq 300); do grep -q '^http' "$out/web.txt" && break; sleep 0.1; done  # the site line, then the URL
  node tests/drive_page.mjs "$(grep -m 1 '^http' "$out/web.txt")" "$out/page"
  cp "$out/page/desktop.png" docs/web.png
else
  echo "   skipped: needs $chromium, node and npm ci (apt-get install chromium nodejs npm); docs/web.png kept"
fi

echo "== cut to a few tens of KB each: halved (the manifold's digits to 14 px), a palette of a few colours"
$PY - <<'EOF'
from PIL import Image
for name, shrink, colours in (("docs/web.png", 2, 32), ("docs/manifold.png", 2, 16), ("docs/loss.png", 1, 64)):
    im = Image.open(name)
    im = im.resize((im.width // shrink, im.height // shrink), Image.LANCZOS) if shrink > 1 else im
    (im if im.mode == "L" else im.convert("RGB")).quantize(colours).save(name, optimize=True)
EOF

echo "== done: docs/samples.png docs/reconstructions.png docs/manifold.png docs/loss.png docs/web.png"
ls -l docs/*.png
