// The page `vae-export web` builds: a grid of fresh samples, one slider per latent dimension, and for a
// 2-D latent the 30x30 manifold beside a draggable latent plane. Everything decodes here, in
// onnxruntime-web's WebAssembly backend. `window.vae` is the hook tests use to hold the page's numbers
// against Python's decoder.
import * as ort from './ort/ort.wasm.min.mjs';
import { gaussianLatents, openDecoder } from './decoder.mjs';

ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;   // the copied runtime, never a CDN
const $ = (id) => document.getElementById(id);
const GRID = 8;            // GRID x GRID samples per click
const MAX_SLIDERS = 20;    // one slider per latent dimension, for the first 20
const SPAN = 3;            // sliders cover -3..3 standard deviations

const state = { variant: null, gridLatents: null, grid: null, single: null, manifold: null, timings: { grid: [], single: [], manifold: [] } };
let decoder, meta, site, switching = Promise.resolve();

/** Run `fn` now, or once more after the current run if asked meanwhile: a drag decodes its latest point. */
function latest(fn) {
  let busy = null, again = false;
  const request = () => {
    again = true;
    busy ??= (async () => { try { while (again) { again = false; await fn(); } } finally { busy = null; } })();
    return busy;
  };
  request.idle = () => busy ?? Promise.resolve();
  return request;
}

/** Draw n decoded images (flat float32, each C*H*W in [0, 1]) as tiles, `cols` per row. */
function draw(canvas, pixels, n, cols) {
  const [c, h, w] = meta.image_shape, rows = Math.ceil(n / cols);
  canvas.width = cols * w;
  canvas.height = rows * h;
  const image = new ImageData(canvas.width, canvas.height);
  const channel = c === 3 ? [0, 1, 2] : [0, 0, 0];       // grayscale (every MNIST preset) or RGB
  for (let i = 0; i < n; i++) {
    const x0 = (i % cols) * w, y0 = Math.floor(i / cols) * h;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const at = 4 * ((y0 + y) * canvas.width + x0 + x);
        for (let k = 0; k < 3; k++) image.data[at + k] = Math.round(255 * pixels[i * c * h * w + channel[k] * h * w + y * w + x]);
        image.data[at + 3] = 255;
      }
    }
  }
  canvas.getContext('2d').putImageData(image, 0, 0);
  return image;
}

const perBatch = (what, ms) => `${what} in ${ms.toFixed(1)} ms`;

const drawGrid = latest(async () => {
  const latents = state.gridLatents;
  const { pixels, ms } = await decoder.decode(latents);
  draw($('grid'), pixels, GRID * GRID, GRID);
  state.grid = { latents, pixels };
  state.timings.grid.push(ms);
  $('grid-time').textContent = perBatch(`${GRID * GRID} samples`, ms);
});

const decodeSingle = latest(async () => {
  const latent = Float32Array.from(state.single.latent);
  const { pixels, ms } = await decoder.decode(latent);
  draw($('single'), pixels, 1, 1);
  state.single = { latent, pixels };
  state.timings.single.push(ms);
  $('single-time').textContent = perBatch('1 image', ms);
  drawPlane();
});

function setLatent(latent) {
  state.single = { latent: Float32Array.from(latent), pixels: state.single?.pixels ?? null };
  document.querySelectorAll('#sliders input').forEach((input, d) => {
    input.value = latent[d];
    input.nextElementSibling.value = (+latent[d]).toFixed(2);
  });
  return decodeSingle();
}

function buildSliders() {
  const box = $('sliders');
  box.replaceChildren();
  for (let d = 0; d < Math.min(meta.latent_dim, MAX_SLIDERS); d++) {
    const label = document.createElement('label');
    label.innerHTML = `<span>z${d + 1}</span><input type="range" min="${-SPAN}" max="${SPAN}" step="0.01" value="0"><output>0.00</output>`;
    label.querySelector('input').addEventListener('input', (e) => {
      const latent = Float32Array.from(state.single.latent);
      latent[d] = +e.target.value;
      setLatent(latent);
    });
    box.append(label);
  }
}

// A 2-D latent: the manifold's tiles sit on Gaussian quantiles (site.json, from Python's
// manifold_latents), so a point on the plane maps to z by interpolating between tile centres:
// clicking a tile's centre gives exactly that tile's latent.
const quantileAt = (u) => {
  const q = site.manifold.quantiles, t = Math.min(Math.max(u * q.length - 0.5, 0), q.length - 1), i = Math.min(Math.floor(t), q.length - 2);
  return q[i] + (t - i) * (q[i + 1] - q[i]);
};
const positionOf = (z) => {
  const q = site.manifold.quantiles;
  let i = 0;
  while (i < q.length - 2 && z > q[i + 1]) i++;
  const t = Math.min(Math.max(i + (z - q[i]) / (q[i + 1] - q[i]), 0), q.length - 1);
  return (t + 0.5) / q.length;
};

function drawPlane() {
  if (!site.manifold || !state.single) return;
  const [z1, z2] = state.single.latent, u = positionOf(z1), v = 1 - positionOf(z2);
  for (const canvas of [$('manifold'), $('plane')]) {
    const g = canvas.getContext('2d'), W = canvas.width, H = canvas.height;
    if (canvas.id === 'manifold') {
      if (!state.manifold?.image) continue;
      g.putImageData(state.manifold.image, 0, 0);
    } else {
      g.fillStyle = '#fff';
      g.fillRect(0, 0, W, H);
      g.strokeStyle = '#dde2e8';
      g.beginPath();
      for (let k = 1; k < 6; k++) { g.moveTo((k * W) / 6, 0); g.lineTo((k * W) / 6, H); g.moveTo(0, (k * H) / 6); g.lineTo(W, (k * H) / 6); }
      g.stroke();
      g.fillStyle = '#64707d';
      g.font = '13px system-ui';
      g.fillText(`z1 = ${z1.toFixed(2)}`, 8, H - 8);
      g.fillText(`z2 = ${z2.toFixed(2)}`, 8, 18);
    }
    g.strokeStyle = '#2f6fde';
    g.lineWidth = Math.max(2, W / 150);
    g.beginPath();
    g.arc(u * W, v * H, W / 40, 0, 2 * Math.PI);
    g.stroke();
  }
}

async function showManifold() {
  const q = site.manifold.quantiles, n = q.length;
  const latents = new Float32Array(n * n * 2);
  for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) latents.set([q[c], q[n - 1 - r]], 2 * (r * n + c));  // z2 falls downwards
  const { pixels, ms } = await decoder.decode(latents);
  state.manifold = { latents, pixels, image: draw($('manifold'), pixels, n * n, n) };
  state.timings.manifold.push(ms);
  $('manifold-time').textContent = perBatch(`${n * n} images`, ms);
  drawPlane();
}

function wirePlane() {
  $('plane-card').hidden = false;
  for (const canvas of [$('manifold'), $('plane')]) {
    const walk = (e) => {
      if (e.type === 'pointermove' && !e.buttons) return;
      const box = canvas.getBoundingClientRect();
      setLatent([quantileAt((e.clientX - box.left) / box.width), quantileAt(1 - (e.clientY - box.top) / box.height)]);
    };
    canvas.addEventListener('pointerdown', walk);
    canvas.addEventListener('pointermove', walk);
  }
}

async function useVariant(file) {
  await Promise.all([drawGrid.idle(), decodeSingle.idle()]);   // never release a session mid-run
  decoder?.release();
  decoder = await openDecoder(ort, file, meta);
  state.variant = file;
  await Promise.all([drawGrid(), decodeSingle(), site.manifold && showManifold()]);  // same latents: compare models
}

function sample() {
  state.gridLatents = gaussianLatents(GRID * GRID, meta.latent_dim);
  return drawGrid();
}

async function main() {
  [site, meta] = await Promise.all(['site.json', 'decoder.json'].map(async (f) => (await fetch(f)).json()));
  $('about').textContent = `${meta.preset} decoder: ${meta.latent_dim}-D latent -> ${meta.image_shape.join('x')} image, ` +
    `trained ${meta.epochs_trained} epoch${meta.epochs_trained === 1 ? '' : 's'} on ${meta.dataset} (test loss ${(+meta.test_loss).toFixed(1)} nats/image).`;
  if (site.models.length > 1) {
    $('variant').replaceChildren(...site.models.map((m) => new Option(m.label, m.file)));
    $('variant').addEventListener('change', (e) => { switching = useVariant(e.target.value); });
    $('variant-picker').hidden = false;
  }
  state.single = { latent: new Float32Array(meta.latent_dim), pixels: null };
  state.gridLatents = gaussianLatents(GRID * GRID, meta.latent_dim);
  buildSliders();
  if (site.manifold) wirePlane();
  $('sample').addEventListener('click', sample);
  $('random').addEventListener('click', () => setLatent(gaussianLatents(1, meta.latent_dim)));
  $('zero').addEventListener('click', () => setLatent(new Float32Array(meta.latent_dim)));
  await useVariant(site.models[0].file);
}

window.vae = {
  ready: main().catch((e) => { $('about').textContent = `Could not start: ${e.message}`; throw e; }),
  state,
  /** Wait until every decode the page has started is drawn. */
  idle: async () => { await switching; await Promise.all([drawGrid.idle(), decodeSingle.idle()]); },
  /** latents: number[][] -> decoded pixels, number[][] (each C*H*W), through the page's current model. */
  async decode(latents) {
    const { pixels } = await decoder.decode(Float32Array.from(latents.flat()));
    const size = pixels.length / latents.length;
    return latents.map((_, i) => Array.from(pixels.subarray(i * size, (i + 1) * size)));
  },
};
