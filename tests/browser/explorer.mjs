// The explorer in a real browser: Debian's headless Chromium (/usr/bin/chromium, or $CHROMIUM)
// driven by playwright-core. Starts `resprop serve --port 0`, loads the page at 1280x720,
// changes the shortcut to scale:0.9, reads the plotted values back from the page and compares
// them with the API's answer for the same request (to 1e-12), checks the prod-lambda overlay
// against 0.9^(L-l), pins the configuration and overlays a second one, cancels a long
// profile, and saves a screenshot that it checks is not blank.
//
//   cd tests/browser && npm ci && node explorer.mjs ../../target/release/resprop /tmp/explorer.png
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const [bin, shot] = process.argv.slice(2);
if (!bin || !shot) {
  console.error("usage: node explorer.mjs RESPROP_BINARY SCREENSHOT.png");
  process.exit(2);
}
const checks = [];
function check(ok, what) {
  checks.push(what);
  if (!ok) throw new Error(`failed: ${what}`);
  console.log(`ok: ${what}`);
}

// A checkpoints folder with one trained run (the test suite's fixture, trained on the digits).
const checkpoints = mkdtempSync(join(tmpdir(), "resprop-explorer-"));
mkdirSync(join(checkpoints, "run1"));
copyFileSync(join(dirname(fileURLToPath(import.meta.url)), "../golden/ck_sgd/checkpoint.npz"), join(checkpoints, "run1/checkpoint.npz"));

// The server, on a free port: its first line names the address.
const server = spawn(bin, ["serve", "--port", "0", "--checkpoints", checkpoints], { stdio: ["ignore", "pipe", "inherit"] });
const url = await new Promise((resolve, reject) => {
  let out = "";
  server.stdout.on("data", (d) => {
    out += d;
    const m = out.match(/(http:\/\/127\.0\.0\.1:\d+\/)/);
    if (m) resolve(m[1]);
  });
  server.on("exit", (code) => reject(new Error(`resprop serve exited (${code}): ${out}`)));
  setTimeout(() => reject(new Error("resprop serve printed no address in 30 s")), 30000);
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Offline: no background connections (this machine refuses them).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // A refused request (the test asks for one) is logged by the browser as a failed load;
  // any other console error counts.
  page.on("console", (m) => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text()); });
  // Nothing but the server is asked for: the page works offline.
  const requested = [];
  page.on("request", (r) => requested.push(r.url()));

  await page.goto(url);
  await page.waitForFunction(() => window.explorer && window.explorer.updates >= 1, null, { timeout: 60000 });
  check((await page.evaluate(() => window.explorer.last.request.shortcut)) === "identity", "the page starts with identity shortcuts");

  // Change the shortcut to scale:0.9 and wait for its chart.
  const before = await page.evaluate(() => window.explorer.updates);
  await page.selectOption("select[name=shortcut_kind]", "scale");
  await page.waitForFunction((n) => window.explorer.updates > n && window.explorer.last.request.shortcut === "scale:0.9", before, { timeout: 60000 });
  const drawn = await page.evaluate(() => {
    const e = window.explorer;
    const byLabel = (c) => Object.fromEntries(c.series.map((s, i) => [s.label, c.data[i]]));
    return { request: e.last.request, grad: byLabel(e.charts.grad), direct: byLabel(e.charts.direct) };
  });
  check(drawn.request.shortcut === "scale:0.9", "the request the page sent names scale:0.9");

  // The API's answer to the same request, fetched apart from the page.
  const res = await fetch(new URL("api/profile", url), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(drawn.request) });
  const answer = await res.json();
  check(res.ok, `the API answers the page's request (${res.status})`);
  const lines = answer.csv.trim().split("\n");
  const header = lines[0].split(",");
  const col = (name) => lines.slice(1).map((l) => Number(l.split(",")[header.indexOf(name)]));
  const close = (a, b) => Math.abs(a - b) <= 1e-12 * Math.max(Math.abs(a), Math.abs(b));
  const same = (plotted, name) => {
    const want = col(name);
    return plotted.length === want.length && plotted.every((v, i) => (v === null ? !(want[i] > 0) : close(v, want[i])));
  };
  check(same(drawn.grad["unit l"], "unit"), "the x axis is the API's units");
  check(same(drawn.grad.total, "grad_norm"), "the plotted ||dE/dx_l|| equals the API's grad_norm to 1e-12");
  check(same(drawn.grad["direct part"], "direct_norm"), "the plotted direct part equals the API's direct_norm to 1e-12");
  check(same(drawn.grad.rest, "rest_norm"), "the plotted rest equals the API's rest_norm to 1e-12");
  check(same(drawn.direct.measured, "direct_ratio"), "the plotted direct ratio equals the API's to 1e-12");

  // Eq. 8: the overlay is prod lambda over the units above l, 0.9^(L-l), and the measured
  // direct part follows it (full pre-activation keeps the shortcut path clean).
  const L = drawn.grad["unit l"].length - 1;
  const overlayLine = drawn.direct["∏ λ (Eq. 8)"];
  check(Array.isArray(overlayLine), "the direct-part chart has the prod-lambda overlay");
  check(overlayLine.every((v, l) => Math.abs(v - 0.9 ** (L - l)) <= 1e-12 * 0.9 ** (L - l)), `the overlay is 0.9^(L-l) over L = ${L} units to 1e-12`);
  check(drawn.direct.measured.every((v, l) => Math.abs(v - 0.9 ** (L - l)) <= 1e-10 * 0.9 ** (L - l)), "the measured direct ratio is 0.9^(L-l) to 1e-10");

  // Pin, then a second configuration: both on the chart.
  await page.click("#pin");
  const pinned = await page.evaluate(() => window.explorer.pinned.columns.grad_norm);
  const n = await page.evaluate(() => window.explorer.updates);
  await page.$eval("input[name=param]", (el) => { el.value = "0.5"; el.dispatchEvent(new Event("input", { bubbles: true })); });
  await page.waitForFunction((k) => window.explorer.updates > k && window.explorer.last.request.shortcut === "scale:0.5", n, { timeout: 60000 });
  const overlay = await page.evaluate(() => {
    const c = window.explorer.charts.grad;
    return { labels: c.series.map((s) => s.label), data: c.data };
  });
  const pinIndex = overlay.labels.indexOf("total, pinned");
  check(pinIndex > 0, "the pinned configuration is a series of the chart");
  check(overlay.data[pinIndex].every((v, i) => (v === null ? !(pinned[i] > 0) : close(v, pinned[i]))), "the pinned series is the pinned answer's grad_norm");
  const total = overlay.data[overlay.labels.indexOf("total")];
  check(!close(total[0], pinned[0]), "the current series is the new configuration's");

  // The screenshot (a scaled shortcut against the pinned one), and that it is not blank:
  // every chart's canvas holds many colours.
  await page.screenshot({ path: shot });
  const colours = await page.evaluate(() => [...document.querySelectorAll("canvas")].map((c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 7) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return seen.size;
  }));
  check(colours.length >= 4 && colours.every((n) => n >= 4), `every chart has drawn pixels (colours per canvas: ${colours.join(", ")})`);
  check(statSync(shot).size > 20000, `the screenshot ${shot} is not blank (${statSync(shot).size} bytes)`);
  // A trained checkpoint against the same network at initialisation, on the same images.
  let n2 = await page.evaluate(() => window.explorer.updates);
  await page.selectOption("select[name=checkpoint]", "run1");
  await page.waitForFunction((k) => window.explorer.updates > k, n2, { timeout: 60000 });
  const trained = await page.evaluate(() => ({ request: window.explorer.last.request, grad: window.explorer.charts.grad.data, labels: window.explorer.charts.grad.series.map((s) => s.label) }));
  check(trained.request.checkpoint === "run1" && trained.request.data === "digits", `the trained run is profiled on its own data (${JSON.stringify(trained.request)})`);
  const trainedAnswer = await (await fetch(new URL("api/profile", url), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(trained.request) })).json();
  const tl = trainedAnswer.csv.trim().split("\n");
  const th = tl[0].split(",");
  const tGrad = tl.slice(1).map((l) => Number(l.split(",")[th.indexOf("grad_norm")]));
  const tPlotted = trained.grad[trained.labels.indexOf("total")];
  check(tPlotted.every((v, i) => (v === null ? !(tGrad[i] > 0) : close(v, tGrad[i]))), "the trained network's plotted ||dE/dx_l|| equals the API's");
  await page.click("#pin");
  n2 = await page.evaluate(() => window.explorer.updates);
  await page.selectOption("select[name=checkpoint]", "");
  await page.waitForFunction((k) => window.explorer.updates > k, n2, { timeout: 60000 });
  const [atInit, config] = await page.evaluate(() => [window.explorer.last.request, window.explorer.checkpoints.run1]);
  check(!atInit.checkpoint && atInit.data === config.data && atInit.net === config.net && atInit.placement === config.placement && atInit.shortcut === config.shortcut,
    `at initialisation: the checkpoint's network freshly drawn, on its data (${JSON.stringify(atInit)})`);
  const series = await page.evaluate(() => window.explorer.charts.grad.series.map((s) => s.label));
  check(series.includes("total, pinned"), "the trained run stays pinned over the network at initialisation");
  await page.click("#unpin");

  // A refused request shows the server's one-line message on the page.
  // Both sizes change before the one event, so no request of one of them alone is sent.
  await page.$eval("#controls", (form) => {
    form.data.value = "";
    form.net.value = "mlp";
    form.units.max = "100000";
    form.units.value = "100000";
    form.width.add(new Option("100000", "100000"));
    form.width.value = "100000";
    form.units.dispatchEvent(new Event("input", { bubbles: true }));
  });
  await page.waitForFunction(() => document.querySelector("#status").classList.contains("error"), null, { timeout: 60000 });
  const message = await page.textContent("#status");
  check(/memory/.test(message) && !message.includes("\n"), `an impossible size shows the preflight's message: ${message.slice(0, 90)}…`);
  // A long computation (ResNet-110 at batch 128, seconds) shows its progress and stops on Cancel.
  await page.$eval("#controls", (form) => {
    form.net.value = "resnet110";
    form.batch.value = "128";
    form.net.dispatchEvent(new Event("input", { bubbles: true }));
  });
  await page.waitForFunction(() => !document.querySelector("#cancel").disabled, null, { timeout: 60000 });
  const progress = await page.textContent("#status");
  await page.click("#cancel");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("cancelled"), null, { timeout: 60000 });
  const cancelled = await page.textContent("#status");
  check(/^computing… \d+\.\d s/.test(progress) && /^cancelled: stopped in the (forward|backward) pass at unit \d+ of 54;/.test(cancelled),
    `a long profile shows progress ("${progress}") and Cancel stops it: ${cancelled}`);
  // Back to a size that computes.
  await page.$eval("#controls", (form) => { form.net.value = "mlp"; form.batch.value = "32"; });
  const k = await page.evaluate(() => window.explorer.updates);
  await page.$eval("#controls", (form) => {
    form.width.value = "32";
    form.units.max = "200";
    form.units.value = "50";
    form.units.dispatchEvent(new Event("input", { bubbles: true }));
  });
  await page.waitForFunction((n) => window.explorer.updates > n, k, { timeout: 60000 });

  check(requested.every((u) => u.startsWith(url) || u.startsWith("blob:")), "the page asked nothing of any other host");
  check(errors.length === 0, `no script error on the page${errors.length ? ": " + errors.join("; ") : ""}`);
  console.log(`browser test: ${checks.length} checks passed`);
} catch (e) {
  failed = true;
  console.error(`browser test: ${e.message}`);
} finally {
  await browser.close();
  server.kill();
}
process.exit(failed ? 1 : 0);
