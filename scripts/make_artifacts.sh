#!/usr/bin/env bash
# Rebuild the shipped default model in artifacts/mlp with the project's own commands:
# train the mlp preset on MNIST for 10 epochs, export ONNX (+ fp16/int8 decoders, and OpenVINO bf16's measured
# cost), check parity, draw a sample grid.
set -euo pipefail
cd "$(dirname "$0")/.."
VE=.venv/bin/vae-export
mkdir -p runs
work=$(mktemp -d runs/artifacts.XXXX)
trap 'rm -rf "$work"' EXIT
$VE train --preset mlp --epochs 10 --seed 1 --out "$work/run" --quiet
$VE onnx "$work/run/checkpoint.pt" --out "$work/export" --fp16 --int8 --bf16 --quiet
mkdir -p artifacts/mlp.new
cp "$work/run/checkpoint.pt" "$work/run/metrics.jsonl" "$work/export/"{encoder.onnx,decoder.onnx,decoder.fp16.onnx,decoder.int8.onnx,decoder.json,manifest.json} artifacts/mlp.new/
$VE sample --model artifacts/mlp.new/decoder.onnx -n 64 --seed 0 --out artifacts/mlp.new/samples.png
rm -rf artifacts/mlp && mv artifacts/mlp.new artifacts/mlp
$VE parity artifacts/mlp/checkpoint.pt artifacts/mlp --quiet
