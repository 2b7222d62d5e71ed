// The native JS embed: decode one latent with onnxruntime-node (CPU) and print the image's mean.
//
//   npm install --onnxruntime-node-install=skip onnxruntime-node   # or, in this repository: npm ci
//   node examples/node/decode_native.mjs artifacts/mlp [pixels.f32]
//
// The skip flag matters offline: onnxruntime-node's postinstall downloads CUDA libraries, while its
// CPU binaries ship inside the package. The latent is z_i = (i % 5 - 2) / 2, as in decode.mjs (the
// onnxruntime-web example), so the two and Python can be compared; a second argument writes the
// image's float32 pixels there (raw, little-endian).
import { readFile, writeFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';

const [dir = 'artifacts/mlp', pixelsPath] = process.argv.slice(2);
const meta = JSON.parse(await readFile(`${dir}/decoder.json`, 'utf8'));   // latent_dim, image_shape, ...
const session = await ort.InferenceSession.create(`${dir}/decoder.onnx`, { executionProviders: ['cpu'] });

const z = Float32Array.from({ length: meta.latent_dim }, (_, i) => ((i % 5) - 2) / 2);
const t0 = performance.now();
const { sample } = await session.run({ latent_sample: new ort.Tensor('float32', z, [1, meta.latent_dim]) });
const ms = performance.now() - t0;
const pixels = sample.data;                                              // (1, C, H, W) float32 in [0, 1]
const mean = pixels.reduce((a, b) => a + b, 0) / pixels.length;
if (pixelsPath) await writeFile(pixelsPath, new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength));
console.log(`mean ${mean.toFixed(8)} over ${pixels.length} pixels (${meta.preset} decoder, onnxruntime-node ${ort.env.versions.node}, ${ms.toFixed(1)} ms)`);
