// Drives the htg search page in headless Chromium (Debian's `chromium`, through playwright-core
// which ships no browser of its own). Started by tests/integration/browser.rs, which runs the
// server and passes:
//   HTG_URL         base URL of a running `htg serve`
//   HTG_IMAGE       a fixture image that is in the index
//   HTG_BAD_IMAGE   a file that is not an image
//   HTG_SCREENSHOT  where to write the screenshot (PNG)
//   CHROMIUM        the browser executable (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.HTG_URL;
const image = process.env.HTG_IMAGE;
const bad = process.env.HTG_BAD_IMAGE;
const shot = process.env.HTG_SCREENSHOT;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
assert.ok(base && image && bad && shot, "HTG_URL, HTG_IMAGE, HTG_BAD_IMAGE and HTG_SCREENSHOT are required");

const profile = mkdtempSync(join(tmpdir(), "htg-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1100, height: 760 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(30_000);
  const foreign = [];
  const crashes = [];
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(base) && !u.startsWith("blob:") && !u.startsWith("data:")) foreign.push(u);
  });
  page.on("pageerror", (e) => crashes.push(String(e)));

  await page.goto(base + "/");
  await page.waitForFunction(() => /\d+ images/.test(document.getElementById("stats").textContent));

  // A file that is not an image: the server's 400 reason is shown, no results.
  await page.setInputFiles("#file", bad);
  await page.waitForSelector("#status.error");
  const err = await page.textContent("#status");
  assert.match(err, /^400: .*not a supported image/, err);
  assert.equal(await page.locator("#results li").count(), 0);

  // The fixture image: k thumbnails, loaded, nearest first, the image itself at distance 0.
  await page.fill("#k", "6");
  await page.setInputFiles("#file", image);
  await page.waitForFunction(() => {
    const imgs = [...document.querySelectorAll("#results li.hit img")];
    return imgs.length === 6 && imgs.every((i) => i.complete && i.naturalWidth > 0);
  });
  const hits = await page.$$eval("#results li.hit", (lis) =>
    lis.map((li) => ({
      id: li.dataset.id,
      src: li.querySelector("img").getAttribute("src"),
      width: li.querySelector("img").naturalWidth,
      distance: li.querySelector(".distance").textContent,
      path: li.querySelector(".path").textContent,
    })),
  );
  assert.equal(hits.length, 6);
  assert.ok(hits[0].path.endsWith(basename(image)), JSON.stringify(hits[0]));
  assert.equal(hits[0].distance, "distance 0.0000");
  for (const h of hits) {
    assert.equal(h.src, `/images/${h.id}/file`);
    assert.ok(h.width > 0, `thumbnail ${h.src} did not load`);
  }
  const distances = hits.map((h) => parseFloat(h.distance.split(" ")[1]));
  assert.deepEqual([...distances].sort((a, b) => a - b), distances, "nearest first");
  const status = await page.textContent("#status");
  assert.match(status, /^6 nearest images in [\d.]+ ms$/, status);
  assert.deepEqual(foreign, [], "the page loads nothing from another origin");
  assert.deepEqual(crashes, [], "no script errors");

  await page.screenshot({ path: shot, fullPage: true });
  console.log(`browser: ok (${hits.length} thumbnails, screenshot ${basename(shot)})`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
