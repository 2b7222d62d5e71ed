#!/usr/bin/env bash
# The whole path: train -> checkpoint -> export -> parity -> sample -> embed -> web page. With MNIST
# available it trains a fresh model briefly; offline without data it exports, checks and samples the
# shipped model. It ends by saying where the pictures are and how to open the page.
set -euo pipefail
cd "$(dirname "$0")/.."
VE=.venv/bin/vae-export
out=runs/demo
rm -rf "$out"
data="${VAE_EXPORT_DATA:-$HOME/.cache/vae-export/data}"
if compgen -G "$data/MNIST/raw/train-images-idx3-ubyte*" > /dev/null; then
  echo "== train (mlp, 3 epochs on MNIST from $data)"
  $VE train --preset mlp --epochs 3 --out "$out"
  ckpt="$out/checkpoint.pt"
else
  echo "== no MNIST in $data: using the shipped model artifacts/mlp"
  mkdir -p "$out"
  ckpt=artifacts/mlp/checkpoint.pt
fi
echo "== export to ONNX (+ fp16/int8 decoder variants) and TorchScript, each checked for parity"
$VE onnx "$ckpt" --out "$out/export" --fp16 --int8 --quiet
$VE torchscript "$ckpt" --out "$out/export" --quiet
echo "== parity of everything exported, against the eager model"
$VE parity "$ckpt" "$out/export"
echo "== sample through onnxruntime"
$VE sample --model "$out/export/decoder.onnx" -n 64 --out "$out/samples.png"
$VE sample --model "$out/export/decoder.onnx" -n 200000 --dtype uint8 --out "$out/samples.npy"
$VE sample --model "$out/export/decoder.onnx" -n 10 --interpolate 1 2 --out "$out/interpolation.png"
echo "== embed the decoder with numpy + onnxruntime only"
.venv/bin/python examples/embed_decoder.py "$out/export/decoder.onnx" "$out/embedded.png"
if [ -d node_modules/onnxruntime-web ]; then
  echo "== a web page that decodes in the browser (onnxruntime-web)"
  $VE web "$out/export" --out "$out/site" --quiet
  page="$VE web $out/export --out $out/site --serve   (then open http://127.0.0.1:8000/)"
else
  page="skipped: needs Node.js and npm (apt-get install nodejs npm), then make install"
fi
pictures=$(cd "$out" && echo *.png)
echo "== done"
echo "pictures: $out/ ($pictures)"
echo "web page: $page"
