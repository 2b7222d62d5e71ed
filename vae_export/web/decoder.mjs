// Decode latents with a vae-export decoder through onnxruntime-web: the same module runs in the page
// (page.mjs) and in Node.js (examples/node/decode.mjs). The caller passes in its `ort` import, so this
// file works with the browser's copied ort.wasm.min.mjs and with Node's `onnxruntime-web` alike.

/** Open `model` (a URL, or the .onnx bytes) described by `meta` (the decoder.json sidecar). */
export async function openDecoder(ort, model, meta) {
  const session = await ort.InferenceSession.create(model, { executionProviders: ['wasm'] });
  if (session.inputNames.join() !== 'latent_sample' || session.outputNames.join() !== 'sample') {
    throw new Error(`not a vae-export decoder: ${session.inputNames} -> ${session.outputNames}`);
  }
  const latentDim = meta.latent_dim;
  const imageSize = meta.image_shape.reduce((a, b) => a * b, 1);  // C * H * W
  let queue = Promise.resolve();  // one run at a time: a session does not take concurrent runs

  /** latents: Float32Array (n * latentDim) -> { pixels: Float32Array (n * C*H*W) in [0, 1], ms } */
  function decode(latents) {
    const run = async () => {
      const n = latents.length / latentDim;
      const start = performance.now();
      const { sample } = await session.run({ latent_sample: new ort.Tensor('float32', latents, [n, latentDim]) });
      return { pixels: sample.data, ms: performance.now() - start };
    };
    const result = queue.then(run);
    queue = result.catch(() => {});
    return result;
  }

  return { latentDim, imageSize, imageShape: meta.image_shape, decode, release: () => session.release() };
}

/** n standard-normal latents (Box-Muller), flat: Float32Array (n * dim). */
export function gaussianLatents(n, dim, random = Math.random) {
  const z = new Float32Array(n * dim);
  for (let i = 0; i < z.length; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - random())), t = 2 * Math.PI * random();
    z[i] = r * Math.cos(t);
    if (i + 1 < z.length) z[i + 1] = r * Math.sin(t);
  }
  return z;
}
