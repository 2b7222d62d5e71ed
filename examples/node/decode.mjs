// The minimal JS embed: decode one latent with onnxruntime-web in Node.js and print the image's mean.
//
//   npm ci && node examples/node/decode.mjs artifacts/mlp [pixels.f32]
//
// The latent is z_i = (i % 5 - 2) / 2, so another runtime can decode the same one and compare; with a
// second argument the image's float32 pixels are written there too (raw, little-endian).
import { readFile, writeFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-web';
import { openDecoder } from '../../vae_export/web/decoder.mjs';

const [dir = 'artifacts/mlp', pixelsPath] = process.argv.slice(2);
const meta = JSON.parse(await readFile(`${dir}/decoder.json`, 'utf8'));   // onnxruntime-web reads no metadata_props
const decoder = await openDecoder(ort, await readFile(`${dir}/decoder.onnx`), meta);

const z = Float32Array.from({ length: decoder.latentDim }, (_, i) => ((i % 5) - 2) / 2);
const { pixels, ms } = await decoder.decode(z);                             // (1 * C*H*W) in [0, 1]
const mean = pixels.reduce((a, b) => a + b, 0) / pixels.length;
if (pixelsPath) await writeFile(pixelsPath, new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength));
console.log(`mean ${mean.toFixed(8)} over ${pixels.length} pixels (${meta.preset} decoder, onnxruntime-web ${ort.env.versions.web}, ${ms.toFixed(1)} ms)`);
