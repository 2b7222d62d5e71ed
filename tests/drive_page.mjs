// Drive a page built by `vae-export web` in headless Chromium, as a visitor would, and write what
// tests/test_web.py checks to OUT_DIR/page.json, with desktop and phone screenshots beside it.
//
//   node tests/drive_page.mjs http://127.0.0.1:8000/ OUT_DIR
//
// Debian's Chromium ($CHROMIUM, default /usr/bin/chromium) through playwright-core: no browser download.
// The page is loaded, "Sample" clicked, the first slider moved; for a 2-D latent a manifold tile is
// clicked and the latent plane dragged; a second model (int8), if any, is selected. Decoded pixels come
// from the page's window.vae hook and from the drawn canvases; the grid decode is then timed over 10
// more clicks (in real time: no virtual clock).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, outDir] = process.argv.slice(2);
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];
const TILE = 7;   // the manifold tile clicked: column 7, row 7 (of 30)

const profile = await mkdtemp(join(tmpdir(), 'vae-web-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: FLAGS, viewport: { width: 1100, height: 900 },
});
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && problems.push(`console error: ${m.text()}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()}`));
  page.on('request', (r) => !r.url().startsWith(url) && problems.push(`request outside the site: ${r.url()}`));

  const settle = () => page.evaluate(() => window.vae.idle());
  const snapshot = (withManifold = false) => page.evaluate((withManifold) => {
    const { grid, single, manifold, variant } = window.vae.state;
    const red = (id) => { const c = document.getElementById(id); return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0)); };
    return {
      variant,
      grid: { latents: Array.from(grid.latents), pixels: Array.from(grid.pixels), canvas: red('grid') },
      single: { latent: Array.from(single.latent), pixels: Array.from(single.pixels), canvas: red('single') },
      manifold: withManifold && manifold && { latents: Array.from(manifold.latents), pixels: Array.from(manifold.pixels) },
    };
  }, withManifold);

  await page.goto(url);
  await page.evaluate(() => window.vae.ready);
  const loaded = await snapshot(true);
  await page.click('#sample');
  await settle();
  await page.locator('#sliders input').first().fill('1.5');
  await settle();
  const result = { loaded, sampled: await snapshot(), problems };

  if (loaded.manifold) {
    await page.locator('#manifold').scrollIntoViewIfNeeded();
    const box = await page.locator('#manifold').boundingBox();          // in viewport coordinates
    await page.mouse.click(box.x + ((TILE + 0.5) / 30) * box.width, box.y + ((TILE + 0.5) / 30) * box.height);
    await settle();
    result.tile = { column: TILE, row: TILE, ...(await snapshot()).single };
    await page.locator('#plane').scrollIntoViewIfNeeded();
    const plane = await page.locator('#plane').boundingBox();
    await page.mouse.move(plane.x + plane.width * 0.5, plane.y + plane.height * 0.5);
    await page.mouse.down();
    await page.mouse.move(plane.x + plane.width * 0.8, plane.y + plane.height * 0.3, { steps: 8 });
    await page.mouse.up();
    await settle();
    result.dragged = (await snapshot()).single;
  }
  await page.screenshot({ path: join(outDir, 'desktop.png'), fullPage: true });
  if (await page.locator('#variant option').count() > 1) {        // e.g. decoder.int8.onnx: the same latents again
    await page.selectOption('#variant', { index: 1 });
    await settle();
    result.variant = await snapshot();
  }

  const start = await page.evaluate(() => window.vae.state.timings.grid.length);
  for (let i = 0; i < 10; i++) { await page.click('#sample'); await settle(); }
  result.timings = await page.evaluate((n) => ({ ...window.vae.state.timings, grid: window.vae.state.timings.grid.slice(n) }), start);
  result.threads = await page.evaluate(() => self.crossOriginIsolated);

  await page.setViewportSize({ width: 390, height: 844 });
  result.phone = await page.evaluate(() => ({ scrollWidth: document.documentElement.scrollWidth, width: innerWidth }));
  await page.screenshot({ path: join(outDir, 'phone.png'), fullPage: true });
  await writeFile(join(outDir, 'page.json'), JSON.stringify(result));
} finally {
  await browser.close();
  await rm(profile, { recursive: true, force: true });
}
