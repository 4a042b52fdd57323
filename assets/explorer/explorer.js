// The explorer's page: every change of the controls asks the server for the network's profile
// (the CSV `resprop profile --csv` writes) and redraws the charts from it. A pinned
// configuration stays on the charts, dashed, beside the current one.
"use strict";

const $ = (s) => document.querySelector(s);
const form = $("#controls");

// The shortcut kinds that take a number, with the slider's range and the flag's syntax.
const PARAMS = {
  scale: { name: "λ", min: 0, max: 1.5, step: 0.01, value: 0.9, flag: (v) => `scale:${v}` },
  gate: { name: "gate bias b", min: -10, max: 10, step: 0.5, value: -6, flag: (v) => `gate:${v}` },
  "shortcut-gate": { name: "gate bias b", min: -10, max: 10, step: 0.5, value: 0, flag: (v) => `shortcut-gate:${v}` },
  dropout: { name: "drop rate P", min: 0, max: 0.9, step: 0.05, value: 0.5, flag: (v) => `dropout:${v}` },
  alpha: { name: "α at the start", min: 0, max: 1, step: 0.01, value: 0, flag: (v) => `alpha:${v}` },
  layerscale: { name: "ε at the start", min: 0.01, max: 1, step: 0.01, value: 0.1, flag: (v) => `layerscale:${v}` },
};

const COLORS = { total: "#1f4e9c", direct: "#d9480f", rest: "#7a7a7a", pred: "#2b8a3e", spread: "#1f4e9c" };

// What the page holds: the last answer, the pinned one, the charts (read by the browser test).
const explorer = (window.explorer = {
  last: null, // {request, label, command, csv, columns}
  pinned: null,
  charts: {},
  updates: 0, // answers drawn so far
  paths: null,
});

function shortcutFlag() {
  const kind = form.shortcut_kind.value;
  const p = PARAMS[kind];
  return p ? p.flag(Number(form.param.value)) : kind;
}

// The keywords of the request, as Python's `profile` takes them.
function request() {
  // A checkpoint is its own network: only the batch is chosen here.
  const data = form.data.value ? { data: form.data.value } : {};
  if (form.checkpoint.value) {
    return { checkpoint: form.checkpoint.value, ...data, batch: Number(form.batch.value), seed: Number(form.seed.value), bn_mode: form.bn_mode.value };
  }
  const r = {
    net: form.net.value,
    placement: form.placement.value,
    shortcut: shortcutFlag(),
    norm: form.norm.value,
    init: form.init.value,
    batch: Number(form.batch.value),
    seed: Number(form.seed.value),
    bn_mode: form.bn_mode.value,
    ...data,
  };
  if (r.net === "mlp") {
    r.units = Number(form.units.value);
    r.width = Number(form.width.value);
  }
  return r;
}

function label(r) {
  const on = r.data ? ` on ${r.data}` : "";
  if (r.checkpoint) return `trained: ${r.checkpoint}${on}`;
  const net = r.net === "mlp" ? `MLP ${r.units}x${r.width}` : r.net;
  return `${net}, ${r.placement}, ${r.shortcut}, ${r.norm}, ${r.init}${on}`;
}

// A checkpoint's network and data on the controls: "at initialisation" is then the same
// network, freshly drawn, on the same images.
function applyCheckpoint(c) {
  if (![...form.net.options].some((o) => o.value === c.net)) form.net.add(new Option(c.net, c.net));
  form.net.value = c.net;
  form.units.value = c.units;
  form.width.value = String(c.width);
  if (![...form.width.options].some((o) => o.value === String(c.width))) form.width.add(new Option(c.width, c.width));
  form.width.value = String(c.width);
  form.placement.value = c.placement;
  const [kind, value] = c.shortcut.split(":");
  form.shortcut_kind.value = kind === "rezero" ? "alpha" : kind;
  syncParam();
  if (value !== undefined) form.param.value = value;
  form.norm.value = c.norm;
  form.init.value = c.init;
  if ([...form.data.options].some((o) => o.value === c.data)) form.data.value = c.data;
}

// The CSV as named columns: numbers, or null for an empty field.
function parseCsv(text) {
  const lines = text.trim().split("\n");
  const header = lines[0].split(",");
  const cols = Object.fromEntries(header.map((h) => [h, []]));
  for (const line of lines.slice(1)) {
    const cells = line.split(",");
    header.forEach((h, i) => {
      const c = cells[i];
      const v = c === "" || c === undefined ? null : Number(c);
      cols[h].push(Number.isNaN(v) ? c : v);
    });
  }
  return cols;
}

// A log axis draws positive values only: 0 and below are left out (the gap says so).
const positive = (a) => a.map((v) => (typeof v === "number" && v > 0 && Number.isFinite(v) ? v : null));

// Log-axis labels: powers of ten only, and of the ticks uPlot places at most about seven
// labelled (every second or third over a wide range).
function fmtTicks(vals) {
  const exps = vals.map((v) => {
    const e = v > 0 ? Math.log10(v) : NaN;
    return Math.abs(e - Math.round(e)) < 1e-9 ? Math.round(e) : null;
  });
  const whole = exps.filter((e) => e !== null);
  const step = Math.max(1, Math.ceil(whole.length / 7));
  let i = -1;
  return exps.map((e) => {
    if (e === null) return "";
    i += 1;
    if (i % step !== 0) return "";
    return Math.abs(e) <= 2 ? String(Number((10 ** e).toFixed(Math.max(0, -e)))) : `1e${e}`;
  });
}

function chartOpts(el, title, xLabel, yLabel, series) {
  const width = Math.max(280, el.clientWidth);
  return {
    width,
    height: Math.max(150, Math.min(205, Math.round(width * 0.48))),
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: false }, y: { distr: 3 } },
    axes: [
      { label: xLabel, labelSize: 18, size: 30 },
      { label: yLabel, labelSize: 18, size: 52, values: (u, vals) => fmtTicks(vals) },
    ],
    series: [{ label: xLabel }, ...series],
  };
}

const line = (label, stroke, extra = {}) => ({ label, stroke, width: 2, points: { show: false }, ...extra });
const dots = (label, stroke) => ({ label, stroke, width: 0, points: { show: true, size: 6, fill: stroke } });
const pinnedLine = (label, stroke) => line(label, stroke, { dash: [6, 4], width: 1.5, alpha: 0.8 });

// Each chart: its series from the current and pinned answers.
const CHARTS = {
  grad: {
    fig: "#fig_grad", y: "‖∂E/∂x_l‖",
    series: (cur, pin) => [
      // The rest first, so that the total is drawn over it where they coincide.
      [line("rest", COLORS.rest), cur.rest_norm],
      [line("direct part", COLORS.direct), cur.direct_norm],
      [line("total", COLORS.total), cur.grad_norm],
      ...(pin ? [[pinnedLine("total, pinned", "#6f8fc9"), pin.grad_norm]] : []),
    ],
  },
  direct: {
    fig: "#fig_direct", y: "direct part / ‖∂E/∂x_L‖",
    series: (cur, pin) => [
      [dots("measured", COLORS.direct), cur.direct_ratio],
      [line("∏ λ (Eq. 8)", COLORS.pred, { dash: [2, 0] }), cur.predicted_direct_ratio],
      ...(pin ? [[pinnedLine("measured, pinned", "#e8925e"), pin.direct_ratio]] : []),
    ],
  },
  spread: {
    fig: "#fig_spread", y: "per-sample ratio",
    series: (cur, pin) => [
      [line("largest", "#8fa8d6", { width: 1 }), cur.sample_ratio_max],
      [line("median", COLORS.spread), cur.sample_ratio_median],
      [line("smallest", "#8fa8d6", { width: 1 }), cur.sample_ratio_min],
      ...(pin ? [[pinnedLine("median, pinned", "#999"), pin.sample_ratio_median]] : []),
    ],
  },
  signal: {
    fig: "#fig_signal", y: "Var(x_l)",
    series: (cur, pin) => [
      [line("Var(x_l)", COLORS.total), cur.act_var],
      ...(pin ? [[pinnedLine("Var(x_l), pinned", "#6f8fc9"), pin.act_var]] : []),
    ],
  },
};

// Draws every chart from scratch (the series change with the pin).
function draw() {
  const cur = explorer.last && explorer.last.columns;
  if (!cur) return;
  const pin = explorer.pinned && explorer.pinned.columns;
  for (const [name, spec] of Object.entries(CHARTS)) {
    const el = $(`${spec.fig} .plot`);
    const pairs = spec.series(cur, pin);
    // The x axis: units 0..L of the current answer (a pinned one of another depth is cut or
    // padded to it).
    const xs = cur.unit;
    const fit = (a) => xs.map((_, i) => (a && i < a.length ? a[i] : null));
    const data = [xs, ...pairs.map(([, a]) => positive(fit(a)))];
    if (explorer.charts[name]) explorer.charts[name].destroy();
    el.textContent = "";
    explorer.charts[name] = new uPlot(chartOpts(el, name, "unit l", spec.y, pairs.map(([s]) => s)), data, el);
  }
  drawPaths();
}

function drawPaths() {
  const el = $("#fig_paths .plot");
  if (explorer.charts.paths) explorer.charts.paths.destroy();
  el.textContent = "";
  const p = explorer.paths;
  if (!p) return;
  const rows = p.columns.unit.map((u, i) => i).filter((i) => p.columns.unit[i] === 0);
  const ks = rows.map((i) => p.columns.k[i]);
  const norms = positive(rows.map((i) => p.columns.exact_norm[i]));
  const opts = chartOpts(el, "paths", "path length k (branches on the path)", "‖G_k(0)‖", [line("‖G_k(0)‖", COLORS.total)]);
  opts.height = 160;
  explorer.charts.paths = new uPlot(opts, [ks, norms], el);
}

function setStatus(text, error = false) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

// One request in flight at a time; a change made meanwhile is sent when it returns.
let inFlight = false;
let pending = false;
let debounce = null;

function schedule() {
  clearTimeout(debounce);
  debounce = setTimeout(send, 120);
}

const JSON_POST = (body) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

// POSTs a job; while it runs, the server's status (time, progress) is shown and Cancel is
// offered.
async function post(path, body) {
  const started = performance.now();
  let done = false;
  const poll = setInterval(async () => {
    try {
      const s = await (await fetch("/api/status")).json();
      if (done || !s.running) return; // a poll that returns after the answer says nothing
      const prog = s.running.total ? ` (${s.running.done} of ${s.running.total})` : "";
      setStatus(`computing… ${s.running.elapsed_s.toFixed(1)} s${prog}`);
      $("#cancel").disabled = false;
    } catch (_) { /* the answer will say */ }
  }, 400);
  try {
    const res = await fetch(path, JSON_POST(body));
    const answer = await res.json();
    return { ok: res.ok, status: res.status, answer, ms: performance.now() - started };
  } finally {
    done = true;
    clearInterval(poll);
    $("#cancel").disabled = true;
  }
}

async function send() {
  if (inFlight) { pending = true; return; }
  inFlight = true;
  pending = false;
  const r = request();
  explorer.paths = null;
  $("#paths_csv").hidden = true;
  let answered;
  try {
    answered = await post("/api/profile", r);
  } catch (e) {
    setStatus(`error: the server did not answer (${e.message})`, true);
  }
  try {
    if (!answered) {
      // said above
    } else if (answered.status === 409) {
      // Cancelled: the charts keep the last answer.
      setStatus(`cancelled: ${answered.answer.error.replace(/^interrupted /, "stopped ")}; the charts show the previous configuration`);
    } else if (!answered.ok) {
      setStatus(`error: ${answered.answer.error}`, true);
      drawPaths();
    } else {
      const { answer, ms } = answered;
      explorer.last = { request: r, label: label(r), command: answer.command, csv: answer.csv, columns: parseCsv(answer.csv) };
      $("#command").textContent = answer.command;
      const url = URL.createObjectURL(new Blob([answer.csv], { type: "text/csv" }));
      $("#csv").href = url;
      const L = explorer.last.columns.unit.length - 1;
      setStatus(`${label(r)}: ${L} units, loss ${answer.loss == null ? "not finite" : answer.loss.toPrecision(4)}, answered in ${Math.round(ms)} ms`);
      draw();
      explorer.updates += 1;
    }
  } catch (e) {
    setStatus(`error: drawing the answer failed (${e.message})`, true);
  } finally {
    inFlight = false;
    if (pending) send();
  }
}

async function computePaths() {
  if (!explorer.last || inFlight) return;
  inFlight = true;
  try {
    const { ok, status, answer, ms } = await post("/api/paths", explorer.last.request);
    if (status === 409) { setStatus(`cancelled: ${answer.error.replace(/^interrupted /, "stopped ")}`); return; }
    if (!ok) { setStatus(`error: ${answer.error}`, true); return; }
    explorer.paths = { csv: answer.csv, columns: parseCsv(answer.csv), command: answer.command };
    $("#paths_csv").href = URL.createObjectURL(new Blob([answer.csv], { type: "text/csv" }));
    $("#paths_csv").hidden = false;
    $("#command").textContent = `${explorer.last.command}\n${answer.command}`;
    setStatus(`paths of ${explorer.last.label}: answered in ${Math.round(ms)} ms`);
    drawPaths();
  } finally {
    inFlight = false;
    if (pending) send();
  }
}

function syncParam() {
  const p = PARAMS[form.shortcut_kind.value];
  $("#param_label").hidden = !p;
  if (p) {
    $("#param_name").textContent = p.name;
    Object.assign(form.param, { min: p.min, max: p.max, step: p.step });
    form.param.value = p.value;
    form.param_out.value = p.value;
  }
}

function syncOutputs() {
  form.units_out.value = form.units.value;
  form.batch_out.value = form.batch.value;
  form.param_out.value = form.param.value;
  for (const el of document.querySelectorAll(".mlp-only")) el.hidden = form.net.value !== "mlp";
  // A checkpoint fixes the network: its controls say so by being disabled.
  const fixed = Boolean(form.checkpoint.value);
  for (const name of ["net", "units", "width", "placement", "shortcut_kind", "param", "norm", "init"]) {
    form[name].disabled = fixed;
  }
}

form.addEventListener("input", (e) => {
  if (e.target.name === "shortcut_kind") syncParam();
  if (e.target.name === "checkpoint" && form.checkpoint.value) applyCheckpoint(explorer.checkpoints[form.checkpoint.value]);
  syncOutputs();
  schedule();
});
form.addEventListener("submit", (e) => e.preventDefault());
$("#pin").addEventListener("click", () => {
  if (!explorer.last) return;
  explorer.pinned = explorer.last;
  $("#unpin").disabled = false;
  $("#pin").textContent = "Pin this one instead";
  draw();
});
$("#unpin").addEventListener("click", () => {
  explorer.pinned = null;
  $("#unpin").disabled = true;
  $("#pin").textContent = "Pin this configuration";
  draw();
});
$("#cancel").addEventListener("click", () => fetch("/api/cancel", JSON_POST({})));
$("#paths_button").addEventListener("click", computePaths);
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(draw, 150); });

(async function start() {
  try {
    const { checkpoints } = await (await fetch("/api/checkpoints")).json();
    explorer.checkpoints = Object.fromEntries(checkpoints.map((c) => [c.name, c]));
    if (checkpoints.length) {
      for (const c of checkpoints) form.checkpoint.add(new Option(`trained: ${c.name} (${c.epochs} epochs on ${c.data})`, c.name));
      $("#checkpoint_label").hidden = false;
    }
  } catch (_) { /* no checkpoints offered */ }
  syncParam();
  syncOutputs();
  send();
})();
