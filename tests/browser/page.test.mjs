// Drives the htg search page in headless Chromium (Debian's `chromium`, through playwright-core
// which ships no browser of its own). Started by tests/integration/browser.rs, which runs the
// server over the photo fixtures (originals and their modified copies) and passes:
//   HTG_URL         base URL of a running `htg serve`
//   HTG_IMAGE       a fixture image that is in the index
//   HTG_BAD_IMAGE   a file that is not an image
//   HTG_SHOTS       the folder for the screenshots (web-page.png: search, web-page-similar.png:
//                   more like this after a click, web-page-duplicates.png: the groups)
//   CHROMIUM        the browser executable (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.HTG_URL;
const image = process.env.HTG_IMAGE;
const bad = process.env.HTG_BAD_IMAGE;
const shots = process.env.HTG_SHOTS;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
assert.ok(base && image && bad && shots, "HTG_URL, HTG_IMAGE, HTG_BAD_IMAGE and HTG_SHOTS are required");

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
  const requests = [];
  page.on("request", (r) => {
    const u = r.url();
    requests.push(`${r.method()} ${u.slice(base.length)}`);
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
    assert.equal(h.src, `/images/${h.id}/thumb?size=256`);
    assert.ok(h.width > 0, `thumbnail ${h.src} did not load`);
  }
  const distances = hits.map((h) => parseFloat(h.distance.split(" ")[1]));
  assert.deepEqual([...distances].sort((a, b) => a - b), distances, "nearest first");
  const status = await page.textContent("#status");
  assert.match(status, /^6 nearest images in [\d.]+ ms$/, status);
  // Thumbnails are downscaled JPEGs, not the photos: no side above 256 px.
  const thumbInfo = await page.evaluate(async (id) => {
    const r = await fetch(`/images/${id}/thumb?size=256`);
    const b = await r.blob();
    const bmp = await createImageBitmap(b);
    return { type: r.headers.get("content-type"), w: bmp.width, h: bmp.height, etag: r.headers.get("etag") };
  }, hits[0].id);
  assert.equal(thumbInfo.type, "image/jpeg");
  assert.ok(Math.max(thumbInfo.w, thumbInfo.h) <= 256, JSON.stringify(thumbInfo));
  assert.ok(thumbInfo.etag, "thumbnails carry an ETag");
  await page.screenshot({ path: join(shots, "web-page.png"), fullPage: true });

  // The distance slider: a cut-off in the widest gap between results keeps those before it,
  // and the page asks the server for it (max_distance), not a filter of its own.
  let gap = 0;
  for (let i = 1; i < distances.length - 1; i++) {
    if (distances[i + 1] - distances[i] > distances[gap + 1] - distances[gap]) gap = i;
  }
  assert.ok(distances[gap + 1] - distances[gap] > 0.02, `no gap to cut in ${distances}`);
  const cut = ((distances[gap] + distances[gap + 1]) / 2).toFixed(2);
  const kept = distances.filter((d) => d <= parseFloat(cut)).length;
  requests.length = 0;
  await page.evaluate((v) => {
    const r = document.getElementById("maxdist");
    r.value = v;
    r.dispatchEvent(new Event("input"));
    r.dispatchEvent(new Event("change"));
  }, cut);
  await page.waitForFunction((c) => document.getElementById("status").textContent.includes(`within ${c}`), cut);
  await page.waitForFunction((n) => document.querySelectorAll("#results li.hit").length === n, kept);
  assert.equal(await page.textContent("#maxdist-out"), cut);
  assert.ok(requests.some((r) => r.startsWith("POST /search?") && r.includes(`max_distance=${cut}`)), requests.join("\n"));
  // From the keyboard: focused, the slider moves with the arrow keys (one step, 0.01).
  await page.focus("#maxdist");
  await page.keyboard.press("ArrowRight");
  assert.equal(await page.inputValue("#maxdist"), (parseFloat(cut) + 0.01).toFixed(2));
  // Back to no cut-off.
  await page.evaluate(() => {
    const r = document.getElementById("maxdist");
    r.value = "4";
    r.dispatchEvent(new Event("change"));
  });
  await page.waitForFunction(() => document.querySelectorAll("#results li.hit").length === 6);
  assert.equal(await page.textContent("#maxdist-out"), "off");

  // More like this, from the keyboard: Enter on the 2nd result searches by its id (nothing
  // uploaded), and the answer is the server's own /images/{id}/similar.
  const second = hits[1];
  requests.length = 0;
  await page.focus(`#results li.hit[data-id="${second.id}"] button.more`);
  await page.keyboard.press("Enter");
  await page.waitForFunction((p) => document.getElementById("status").textContent.startsWith("6 nearest") &&
    document.querySelector("#query").alt === p, second.path);
  const shown = await page.$$eval("#results li.hit", (lis) => lis.map((li) => li.dataset.id));
  const want = await page.evaluate(async (id) => (await (await fetch(`/images/${id}/similar?k=6`)).json()).results.map((h) => String(h.id)), second.id);
  assert.deepEqual(shown, want, "more like this shows the server's similar images");
  assert.ok(!shown.includes(second.id), "the image itself is left out");
  assert.ok(requests.some((r) => r.startsWith(`GET /images/${second.id}/similar?k=6`)), requests.join("\n"));
  assert.ok(!requests.some((r) => r.startsWith("POST")), "nothing uploaded");
  await page.waitForFunction(() => [...document.querySelectorAll("#results li.hit img")].every((i) => i.complete && i.naturalWidth > 0));
  // And by mouse: a click on the first result of that answer.
  const third = shown[0];
  await page.click(`#results li.hit[data-id="${third}"] button.more`);
  await page.waitForFunction((id) => [...document.querySelectorAll("#results li.hit")].every((li) => li.dataset.id !== id) &&
    document.getElementById("status").textContent.startsWith("6 nearest"), third);
  await page.waitForFunction(() => [...document.querySelectorAll("#results li.hit img")].every((i) => i.complete && i.naturalWidth > 0));
  await page.screenshot({ path: join(shots, "web-page-similar.png"), fullPage: true });

  // The duplicates view: at the calibrated default, every group holds one original and its
  // modified copies (the copies are named after their original: `chelsea-crop.jpg`).
  await page.click("#tab-dups");
  await page.waitForSelector("#groups section.group");
  await page.waitForFunction(() => [...document.querySelectorAll("#groups img")].every((i) => i.complete && i.naturalWidth > 0));
  const groups = await page.$$eval("#groups section.group", (secs) => secs.map((s) => ({
    kind: s.dataset.kind,
    paths: [...s.querySelectorAll(".path")].map((p) => p.textContent.split("/").pop()),
  })));
  assert.ok(groups.length >= 2, JSON.stringify(groups));
  for (const g of groups) {
    const originals = new Set(g.paths.map((p) => p.replace(/\.[a-z]+$/, "").split("-")[0]));
    assert.equal(originals.size, 1, `one original per group: ${g.paths}`);
    assert.ok(g.paths.length >= 2, `${g.paths}`);
  }
  const dupStatus = await page.textContent("#dup-status");
  assert.match(dupStatus, /^\d+ near-duplicate and \d+ exact-copy groups among \d+ images \(distance 1\.00/, dupStatus);
  assert.equal(await page.getAttribute("#tab-dups", "aria-pressed"), "true");
  await page.screenshot({ path: join(shots, "web-page-duplicates.png"), fullPage: true });
  // A distance of 0 links nothing: no near-duplicate groups.
  await page.evaluate(() => {
    const r = document.getElementById("dupdist");
    r.value = "0";
    r.dispatchEvent(new Event("change"));
  });
  await page.waitForFunction(() => /^0 near-duplicate/.test(document.getElementById("dup-status").textContent));

  // A phone's width: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.click("#tab-search");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than a phone`);

  assert.deepEqual(foreign, [], "the page loads nothing from another origin");
  assert.deepEqual(crashes, [], "no script errors");
  console.log(`browser: ok (${hits.length} thumbnails, ${groups.length} duplicate groups, screenshots in ${shots})`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
