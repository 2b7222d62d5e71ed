// Run one ONNX file in Node with onnxruntime-node (native CPU) or onnxruntime-web (its WebAssembly
// CPU backend, the one browsers run), for `vae-export portability`: the way an app would load it.
//
//   node run_onnx.mjs node|web NODE_MODULES MODEL INPUT_NAME INPUT.f32 SHAPE_JSON OUTPUT_NAMES OUT_PREFIX
//
// The input is raw little-endian float32; each output is written to OUT_PREFIX.NAME.f32, read by name.
import { readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';

const [engine, modules, model, inputName, inputPath, shapeJson, outputNames, outPrefix] = process.argv.slice(2);
const require = createRequire(`${modules}/`);
const ort = require(engine === 'node' ? 'onnxruntime-node' : 'onnxruntime-web');
if (engine === 'web') ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(await readFile(model), { executionProviders: [engine === 'node' ? 'cpu' : 'wasm'] });
const raw = await readFile(inputPath);
const input = new ort.Tensor('float32', new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), JSON.parse(shapeJson));
const results = await session.run({ [inputName]: input });
for (const name of outputNames.split(',')) {
  const data = results[name].data;
  await writeFile(`${outPrefix}.${name}.f32`, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}
