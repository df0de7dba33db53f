// aqpim-sim explorer: controls built from /api/schema, state in the URL, charts drawn here as SVG.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVGNS = "http://www.w3.org/2000/svg";
const SLIDERS = new Set(["batch", "context", "channels"]);  // log-scale sliders beside the number box
const COLORS = { offload: "#d9822b", pim: "#2f6db5", aqpim: "#2e9b5f", gpu: "#7a7f87" };
const PART_COLORS = ["#2f6db5", "#d9822b", "#2e9b5f", "#b3261e", "#8a5cc2", "#c48a00", "#4aa8b8", "#7a7f87",
                     "#e377c2", "#8c564b", "#17becf", "#bcbd22"];
let schema = null;
let seq = 0;
let lastEstimate = null;
let lastRun = null;
let uploaded = null;  // text of an uploaded config.json

// ---------- formatting ----------
function fmtTime(s) {
  if (s === null || s === undefined) return "–";
  if (s >= 1) return s.toFixed(3) + " s";
  if (s >= 1e-3) return (s * 1e3).toFixed(3) + " ms";
  return (s * 1e6).toFixed(1) + " µs";
}
function fmtBytes(b) {
  const units = [[2 ** 40, "TiB"], [2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]];
  for (const [f, u] of units) if (b >= f) return (b / f).toFixed(2) + " " + u;
  return b.toFixed(0) + " B";
}
const fmtNum = (x, d = 2) => (x === null || x === undefined) ? "–" : Number(x).toFixed(d);
function colorOf(label) {
  const system = label.split("+")[0];
  return COLORS[system] || "#555";
}

// ---------- controls ----------
function field(row) {
  const div = document.createElement("div");
  div.className = "ctl";
  div.dataset.key = row.key;
  const label = document.createElement("label");
  label.htmlFor = "opt-" + row.key;
  label.textContent = row.key + (row.unit ? ` (${row.unit})` : "");
  label.title = `${row.flag}: ${row.help}`;
  let input;
  if (row.choices && row.choices.length) {
    input = document.createElement("select");
    for (const c of row.choices) input.add(new Option(String(c), String(c)));
    if (row.key === "model") input.add(new Option("(uploaded config.json)", "__upload__"));
  } else if (row.type === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
  } else {
    input = document.createElement("input");
    input.type = (row.type === "int" || row.type === "float") ? "number" : "text";
    if (row.type === "int") input.step = "1";
    if (row.type === "float") input.step = "any";
    if (row.minimum !== null && input.type === "number") input.min = row.minimum;
    if (row.maximum !== null && input.type === "number") input.max = row.maximum;
    if (row.default === null) input.placeholder = "default";
  }
  input.id = "opt-" + row.key;
  input.name = row.key;
  input.title = row.help;
  div.append(label, input);
  setControl(input, row.default);
  if (SLIDERS.has(row.key)) {
    const slider = document.createElement("input");
    slider.type = "range";
    slider.id = "slider-" + row.key;
    const lo = Math.max(row.minimum || 1, 1), hi = row.maximum || 65536;
    slider.min = Math.log2(lo); slider.max = Math.log2(hi); slider.step = "0.25";
    slider.value = Math.log2(row.default || (row.key === "channels" ? 160 : lo));
    slider.addEventListener("input", () => {
      input.value = String(Math.round(2 ** Number(slider.value)));
      changed(true);
    });
    input.addEventListener("input", () => { if (input.value) slider.value = Math.log2(Number(input.value)); });
    div.append(document.createElement("span"), slider);
  }
  input.addEventListener("change", () => changed(false));
  return div;
}

function setControl(input, value) {
  if (input.type === "checkbox") input.checked = value === true || value === "true" || value === "1";
  else input.value = (value === null || value === undefined) ? "" : String(value);
}

function controlValue(input) {
  if (input.type === "checkbox") return input.checked ? "true" : "false";
  return input.value;
}

function buildControls() {
  const form = $("#controls");
  const add = (title, rows) => {
    const fs = document.createElement("fieldset");
    const lg = document.createElement("legend");
    lg.textContent = title;
    fs.append(lg);
    for (const r of rows) fs.append(field(r));
    form.append(fs);
    return fs;
  };
  add("Workload and model", schema.shared.filter((r) => r.key !== "hardware"));
  const upload = document.createElement("div");
  upload.className = "ctl";
  upload.innerHTML = '<label for="upload">config.json</label><input id="upload" type="file" accept=".json,application/json">';
  form.lastChild.insertBefore(upload, form.lastChild.children[2]);
  $("#upload").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    if (f.size > schema.limits.model_json_bytes) { showError(`page: an uploaded config.json must be a text of at most ${schema.limits.model_json_bytes / 1024} KiB`); return; }
    uploaded = await f.text();
    $("#opt-model").value = "__upload__";
    changed(false);
  });
  const machine = add("Machine", schema.shared.filter((r) => r.key === "hardware"));
  machine.append(field({ key: "pcie_gbps", type: "float", optional: true, default: null, choices: [], minimum: 0.1,
    maximum: 10000, help: schema.page.pcie_gbps + " (Gen4 x16 ~ 25, Gen5 ~ 35-50, Gen6 ~ 100 measured)",
    unit: "GB/s", flag: "(a machine file)" }));
  // system options, grouped by the systems that have them
  const groups = new Map();
  for (const r of schema.options) {
    const title = "Options of " + r.systems.join(", ");
    if (!groups.has(title)) groups.set(title, []);
    groups.get(title).push(r);
  }
  for (const [title, rows] of groups) add(title, rows).dataset.systems = rows[0].systems.join(",");
  const vs = document.createElement("fieldset");
  vs.className = "variants";
  vs.innerHTML = "<legend>Systems and variants to compare</legend>";
  for (const v of schema.variants) {
    const l = document.createElement("label");
    l.title = schema.systems[v.system] || "";
    const cb = document.createElement("input");
    cb.type = "checkbox"; cb.name = "variant"; cb.value = v.label; cb.id = "variant-" + v.label; cb.checked = v.default;
    cb.addEventListener("change", () => changed(false));
    l.append(cb, " " + v.label);
    vs.append(l);
  }
  form.prepend(vs);
  const sx = $("#sweep_x");
  for (const k of schema.sweepable) sx.add(new Option(k, k));
  sx.value = "context";
  sx.addEventListener("change", () => {
    const logs = new Set(schema.log_sweeps);
    $("#sweep_scale").value = logs.has(sx.value) ? "log" : "linear";
    const row = [...schema.shared, ...schema.options].find((r) => r.key === sx.value);
    const dflt = { context: [1024, 131072], channels: [16, 640], pq_m: [2, 64], batch: [1, 128], pcie_gbps: [8, 256],
      lut_bytes: [256, 65536], recent: [0, 4096], sinks: [0, 64], pq_k: [16, 1024] }[sx.value];
    if (dflt) { $("#sweep_from").value = dflt[0]; $("#sweep_to").value = dflt[1]; }
    else if (row) { $("#sweep_from").value = row.minimum ?? 1; $("#sweep_to").value = Math.min(row.maximum ?? 64, 64); }
  });
  $("#sweep-go").addEventListener("click", () => { writeUrl(); sweep(); });
  $("#log").addEventListener("change", () => { writeUrl(); if (lastRun) drawRun(lastRun); });
  $("#explain-of").addEventListener("change", () => drawExplain());
  $("#show-command").addEventListener("click", showCommand);
  $("#copy-link").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(location.href));
}

function allRows() { return [...schema.shared, ...schema.options]; }

// The page's state: non-default controls, the variants, page keys; the same mapping goes to the URL and the API.
function readState() {
  const state = {};
  for (const r of allRows()) {
    const input = document.getElementById("opt-" + r.key);
    const v = controlValue(input);
    const dflt = r.default === null ? "" : String(r.default);
    if (r.key === "model" && v === "__upload__") continue;
    if (v !== dflt) state[r.key] = v;
  }
  if ($("#opt-model").value === "__upload__" && uploaded !== null) state.model_json = uploaded;
  const p = $("#opt-pcie_gbps").value;
  if (p) state.pcie_gbps = p;
  const chosen = [...document.querySelectorAll("input[name=variant]:checked")].map((c) => c.value);
  const dflt = schema.variants.filter((v) => v.default).map((v) => v.label);
  if (chosen.join(",") !== dflt.join(",")) state.variants = chosen.join(",");
  if (!$("#log").checked) state.log = "0";
  for (const k of ["sweep_x", "sweep_from", "sweep_to", "sweep_points", "sweep_scale"]) {
    const el = document.getElementById(k);
    if (el.value && el.value !== el.dataset.initial) state[k] = el.value;
  }
  return state;
}

function applyState(state) {
  for (const [k, v] of Object.entries(state)) {
    const input = document.getElementById("opt-" + k) || document.getElementById(k);
    if (k === "variants") {
      const want = new Set(v.split(","));
      for (const cb of document.querySelectorAll("input[name=variant]")) cb.checked = want.has(cb.value);
    } else if (k === "log") {
      $("#log").checked = v !== "0";
    } else if (k === "model_json") {
      uploaded = v;
      $("#opt-model").value = "__upload__";
    } else if (input) {
      setControl(input, v);
      const slider = document.getElementById("slider-" + k);
      if (slider && v) slider.value = Math.log2(Number(v));
    }
  }
}

// Keys the URL holds but the page has no control for still go to the server, which names them in its error.
let extraState = {};
function stateFromUrl() {
  const q = new URLSearchParams(location.search);
  const out = {};
  for (const [k, v] of q) out[k] = v;
  return out;
}
function writeUrl() {
  const state = { ...readState(), ...extraState };
  const q = new URLSearchParams(state).toString();
  history.replaceState(null, "", q ? "?" + q : location.pathname);
  return state;
}

function markApplicable() {
  const chosen = new Set([...document.querySelectorAll("input[name=variant]:checked")].map((c) => c.value.split("+")[0]));
  for (const fs of document.querySelectorAll("fieldset[data-systems]")) {
    const on = fs.dataset.systems.split(",").some((s) => chosen.has(s));
    fs.classList.toggle("off", !on);
    for (const d of fs.querySelectorAll(".ctl")) d.classList.toggle("off", !on);
  }
}

let timer = null;
function changed(debounce) {
  extraState = {};
  clearTimeout(timer);
  timer = setTimeout(update, debounce ? 150 : 0);
}

// ---------- talking to the server ----------
async function post(path, state) {
  const res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(state) });
  const data = await res.json().catch(() => ({ error: `the server answered ${res.status} without JSON` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}
function showError(msg) {
  const e = $("#error");
  e.textContent = msg;
  e.hidden = !msg;
}
function status(kind, value, text) {
  const s = $("#status");
  s.dataset[kind] = value;
  s.dataset.seq = String(seq);
  s.textContent = text;
}

async function update() {
  const mine = ++seq;
  const state = writeUrl();
  markApplicable();
  status("estimate", "busy", "closed form…");
  status("run", "waiting", "closed form…");
  try {
    const est = await post("/api/estimate", state);
    if (mine !== seq) return;
    lastEstimate = est;
    showError("");
    drawEstimate(est);
    status("estimate", "done", "closed form shown; simulating…");
  } catch (err) {
    if (mine !== seq) return;
    showError(err.message);
    status("estimate", "error", "error");
    status("run", "error", "error: " + err.message);
    return;
  }
  status("run", "busy", "closed form shown; simulating…");
  try {
    const run = await post("/api/run", state);
    if (mine !== seq) return;
    lastRun = run;
    drawRun(run);
    status("run", "done", `simulated ${run.rows[0] ? run.rows[0].steps : 0} steps`);
  } catch (err) {
    if (mine !== seq) return;
    showError(err.message);
    status("run", "error", "error: " + err.message);
  }
}

async function sweep() {
  const state = writeUrl();
  $("#sweep-notes").textContent = "sweeping…";
  $("#sweep-section").dataset.state = "busy";
  try {
    const sw = await post("/api/sweep", state);
    drawSweep(sw);
    $("#sweep-section").dataset.state = "done";
  } catch (err) {
    $("#sweep-notes").textContent = "";
    showError(err.message);
    $("#sweep-section").dataset.state = "error";
  }
}

// ---------- drawing ----------
function el(name, attrs, parent, text) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.append(e);
  return e;
}
function clear(svg) { while (svg.firstChild) svg.firstChild.remove(); }
function width(svg) { return svg.getBoundingClientRect().width || 600; }
function niceTicks(lo, hi, log) {
  if (log) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) out.push(10 ** e);
    return out.filter((t) => t >= lo * 0.999 && t <= hi * 1.001);
  }
  const step = 10 ** Math.floor(Math.log10((hi - lo) / 4 || 1));
  const k = [1, 2, 5, 10].find((m) => (hi - lo) / (m * step) <= 6) * step;
  const out = [];
  for (let t = Math.ceil(lo / k) * k; t <= hi + 1e-12; t += k) out.push(t);
  return out;
}

// Horizontal bars, one per item; log or linear x axis.
function barChart(svg, items, { log = false, fmt = fmtTime } = {}) {
  clear(svg);
  const W = width(svg), rowH = 22, left = 190, right = 80, top = 8;
  svg.style.height = (top + items.length * rowH + 24) + "px";
  const vals = items.map((i) => i.value).filter((v) => v > 0);
  if (!vals.length) return;
  let lo = log ? Math.min(...vals) / 2 : 0, hi = Math.max(...vals) * (log ? 1.5 : 1.05);
  if (log) { lo = 10 ** Math.floor(Math.log10(lo)); }
  const x = (v) => left + (W - left - right) * (log ? (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : v / hi);
  for (const t of niceTicks(Math.max(lo, log ? lo : 0), hi, log)) {
    el("line", { x1: x(t), x2: x(t), y1: top, y2: top + items.length * rowH, class: "grid" }, svg);
    el("text", { x: x(t), y: top + items.length * rowH + 14, "text-anchor": "middle" }, svg, fmt(t));
  }
  items.forEach((it, i) => {
    const y = top + i * rowH;
    el("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, svg, it.label);
    el("rect", { x: left, y: y + 3, width: Math.max(1, x(it.value) - left), height: rowH - 6, fill: it.color, opacity: it.fits === false ? 0.35 : 1, "data-label": it.label, "data-value": String(it.value) }, svg)
      .append(el("title", {}, null, `${it.label}: ${fmt(it.value)}`));
    el("text", { x: x(it.value) + 4, y: y + 15, class: "value" }, svg, fmt(it.value) + (it.fits === false ? " (does not fit)" : ""));
  });
}

// Horizontal stacked bars: each item's parts in a shared colour per part name; log axis on totals if asked.
function stackedChart(svg, items, { fmt = fmtTime, log = false } = {}) {
  clear(svg);
  const names = [...new Set(items.flatMap((it) => Object.keys(it.parts).filter((k) => it.parts[k] > 0)))];
  const W = width(svg), rowH = 22, left = 190, right = 80, top = 8;
  const legendH = 16 * Math.ceil(names.length / 4);
  svg.style.height = (top + items.length * rowH + 24 + legendH) + "px";
  const totals = items.map((it) => Object.values(it.parts).reduce((a, b) => a + b, 0));
  const pos = totals.filter((t) => t > 0);
  if (!pos.length) return;
  const hi = Math.max(...pos) * 1.05, lo = log ? 10 ** Math.floor(Math.log10(Math.min(...pos) / 2)) : 0;
  const scale = (v) => (W - left - right) * (log ? (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : v / hi);
  items.forEach((it, i) => {
    const y = top + i * rowH, total = totals[i];
    el("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, svg, it.label);
    let x0 = left;
    const full = scale(total);  // on a log axis the parts share the bar's length in proportion
    for (const n of names) {
      const v = it.parts[n] || 0;
      if (v <= 0) continue;
      const w = total > 0 ? full * v / total : 0;
      el("rect", { x: x0, y: y + 3, width: Math.max(w, 0.5), height: rowH - 6, fill: PART_COLORS[names.indexOf(n) % PART_COLORS.length] }, svg)
        .append(el("title", {}, null, `${n}: ${fmt(v)} (${(100 * v / total).toFixed(0)}%)`));
      x0 += w;
    }
    el("text", { x: x0 + 4, y: y + 15 }, svg, fmt(total));
  });
  const ly = top + items.length * rowH + 20;
  names.forEach((n, i) => {
    const lx = left + (i % 4) * 150, yy = ly + 16 * Math.floor(i / 4);
    el("rect", { x: lx, y: yy - 9, width: 10, height: 10, fill: PART_COLORS[i % PART_COLORS.length] }, svg);
    el("text", { x: lx + 14, y: yy }, svg, n);
  });
}

function drawEstimate(est) {
  const thead = $("#estimate thead"), tbody = $("#estimate tbody");
  thead.innerHTML = "<tr><th>variant</th><th>step latency</th><th>tokens/s</th><th>fits</th><th>admitted</th><th>energy/token</th><th>KV cache</th><th>where</th></tr>";
  tbody.innerHTML = "";
  const notes = [];
  for (const r of est.rows) {
    const tr = document.createElement("tr");
    tr.dataset.label = r.label;
    tr.className = (r.label === est.winner ? "winner " : "") + (r.fits ? "" : "nofit");
    const cells = [
      [r.label, "label", r.label],
      [fmtTime(r.step_latency_s) + (r.exact ? "" : " ≥"), "lat", r.step_latency_s],
      [fmtNum(r.tokens_per_s, 1), "tps", r.tokens_per_s],
      [r.fits ? "yes" : "no", "fits", r.fits],
      [`${r.peak_batch} of ${r.batch}`, "admitted", r.peak_batch],
      [r.energy_per_token_j === null ? "–" : fmtNum(r.energy_per_token_j, 3) + " J", "energy", r.energy_per_token_j],
      [fmtBytes(r.kv_bytes), "kv", r.kv_bytes],
      [r.kv_location, "where", r.kv_location],
    ];
    for (const [text, cls, value] of cells) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      td.dataset.value = String(value);
      tr.append(td);
    }
    if (!r.fits) tr.title = r.fit_reasons.join("; ");
    tbody.append(tr);
    for (const w of r.warnings) notes.push(`${r.label}: ${w}`);
  }
  $("#estimate-notes").textContent = (est.rows.some((r) => !r.exact) ? "≥: a lower bound (overlapping schedules); the simulation gives the time.\n" : "") + notes.join("\n");
}

function drawRun(run) {
  const log = $("#log").checked;
  $("#run-title").textContent = `(discrete-event run, ${run.rows[0] ? run.rows[0].steps : 0} steps)`;
  barChart($("#latency-chart"), run.rows.map((r) => ({ label: r.label, value: r.step_latency_s, color: colorOf(r.label), fits: r.fits })), { log });
  stackedChart($("#breakdown-chart"), run.rows.map((r) => ({ label: r.label, parts: scaleParts(r.breakdown_s, 1 / Math.max(r.steps, 1)) })), { log });
  stackedChart($("#energy-chart"), run.rows.map((r) => ({ label: r.label, parts: scaleParts(r.energy_j, 1 / Math.max(r.steps * r.batch, 1)) })), { fmt: (v) => fmtNum(v, 3) + " J", log });
  drawCapacity(run.rows);
  drawTimelines(run.rows);
  const acc = $("#accuracy tbody");
  acc.innerHTML = "";
  for (const r of run.rows) {
    const tr = document.createElement("tr");
    tr.dataset.label = r.label;
    tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = r.label;
    tr.children[1].textContent = r.accuracy;
    acc.append(tr);
  }
  const sel = $("#explain-of"), was = sel.value;
  sel.innerHTML = "";
  for (const r of run.rows) sel.add(new Option(r.label, r.label));
  if (run.rows.some((r) => r.label === was)) sel.value = was;
  drawExplain();
}
function scaleParts(parts, f) { const o = {}; for (const [k, v] of Object.entries(parts || {})) o[k] = v * f; return o; }
function drawExplain() {
  const r = lastRun && lastRun.rows.find((x) => x.label === $("#explain-of").value);
  $("#explain").textContent = r ? r.explain : "";
}

function drawCapacity(rows) {
  // each variant: its KV bytes against the memory it lives in (PIM capacity or GPU memory), fits or not
  const items = rows.map((r) => {
    const cap = r.capacity.pim_capacity_bytes;
    return { label: r.label, parts: cap ? { "KV in PIM": Math.min(r.capacity.pim_used_bytes ?? r.kv_bytes, cap), "spilled or refused": Math.max(0, r.kv_bytes - cap), "free PIM": Math.max(0, cap - (r.capacity.pim_used_bytes ?? r.kv_bytes)) } : { "KV (GPU/host)": r.kv_bytes } };
  });
  stackedChart($("#capacity-chart"), items, { fmt: fmtBytes });
}

function drawTimelines(rows) {
  const box = $("#timelines");
  box.innerHTML = "";
  const kinds = [...new Set(rows.flatMap((r) => r.timeline.kinds))];
  const tmax = Math.max(...rows.map((r) => r.timeline.step_s));
  for (const r of rows) {
    const t = r.timeline, laneH = 9, left = 150, top = 16;
    const svg = el("svg", { "data-label": r.label }, box);
    const W = box.getBoundingClientRect().width || 800;
    svg.style.height = (top + t.lanes.length * laneH + 18) + "px";
    el("text", { x: 0, y: 12, "font-weight": 600 }, svg, `${r.label}: one step, ${fmtTime(t.step_s)} (shared time axis)`);
    const x = (s) => left + (W - left - 10) * s / tmax;
    t.lanes.forEach((lane, i) => el("text", { x: left - 4, y: top + i * laneH + 8, "text-anchor": "end", style: "font-size:9px" }, svg, lane));
    for (const [lane, s, e, k] of t.spans) {
      const kind = t.kinds[k];
      el("rect", { x: x(s), y: top + lane * laneH + 1, width: Math.max(0.5, x(e) - x(s)), height: laneH - 2, fill: PART_COLORS[kinds.indexOf(kind) % PART_COLORS.length] }, svg)
        .append(el("title", {}, null, `${t.lanes[lane]} ${kind}: ${fmtTime(e - s)} from ${fmtTime(s)}`));
    }
    const yb = top + t.lanes.length * laneH + 12;
    for (const tk of niceTicks(0, tmax, false)) el("text", { x: x(tk), y: yb, "text-anchor": "middle", style: "font-size:9px" }, svg, fmtTime(tk));
  }
  const legend = el("svg", { style: "height:20px" }, box);
  kinds.forEach((k, i) => {
    el("rect", { x: 150 + i * 120, y: 5, width: 10, height: 10, fill: PART_COLORS[i % PART_COLORS.length] }, legend);
    el("text", { x: 164 + i * 120, y: 14 }, legend, k);
  });
}

function drawSweep(sw) {
  const svg = $("#sweep-chart");
  clear(svg);
  const W = width(svg), H = 320, left = 70, right = 160, top = 10, bottom = 40;
  const xs = sw.values, xlog = ($("#sweep_scale").value === "log");
  const ys = Object.values(sw.series).flat().filter((v) => v !== null && v > 0);
  if (!ys.length) return;
  const ylo = 10 ** Math.floor(Math.log10(Math.min(...ys))), yhi = 10 ** Math.ceil(Math.log10(Math.max(...ys)));
  const xlo = Math.min(...xs), xhi = Math.max(...xs);
  const fx = (v) => left + (W - left - right) * (xlog ? Math.log(v / xlo) / Math.log(xhi / xlo || 2) : (v - xlo) / ((xhi - xlo) || 1));
  const fy = (v) => top + (H - top - bottom) * (1 - Math.log(v / ylo) / Math.log(yhi / ylo || 10));
  for (const t of niceTicks(ylo, yhi, true)) {
    el("line", { x1: left, x2: W - right, y1: fy(t), y2: fy(t), class: "grid" }, svg);
    el("text", { x: left - 4, y: fy(t) + 4, "text-anchor": "end" }, svg, fmtTime(t));
  }
  const xt = xlog ? xs.filter((_, i) => i % Math.ceil(xs.length / 8) === 0) : niceTicks(xlo, xhi, false);
  for (const t of xt) el("text", { x: fx(t), y: H - bottom + 14, "text-anchor": "middle" }, svg, Number(t.toPrecision(4)).toString());
  el("text", { x: (left + W - right) / 2, y: H - 6, "text-anchor": "middle" }, svg, sw.x);
  el("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }, svg);
  el("text", { x: 4, y: 12 }, svg, "step latency (log)");
  for (const c of sw.changes) {
    const xm = (fx(xs[c.index - 1]) + fx(xs[c.index])) / 2;
    el("line", { x1: xm, x2: xm, y1: top, y2: H - bottom, class: "change", "data-x": c.x }, svg);
    el("text", { x: xm + 3, y: top + 10 }, svg, `→ ${c.to || "none fits"}`);
  }
  let li = 0;
  for (const [label, vals] of Object.entries(sw.series)) {
    const color = colorOf(label), dash = (li % 2) ? "5 3" : "";
    let d = "";
    vals.forEach((v, i) => { if (v !== null && v > 0) d += (d && vals[i - 1] !== null ? "L" : "M") + fx(xs[i]) + "," + fy(v); });
    el("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash, "data-label": label }, svg);
    vals.forEach((v, i) => { if (v !== null && v > 0 && !sw.fits[label][i]) el("circle", { cx: fx(xs[i]), cy: fy(v), r: 3, fill: "#fff", stroke: color }, svg); });
    el("line", { x1: W - right + 10, x2: W - right + 30, y1: top + 12 + 16 * li, y2: top + 12 + 16 * li, stroke: color, "stroke-width": 2, "stroke-dasharray": dash }, svg);
    el("text", { x: W - right + 34, y: top + 16 + 16 * li }, svg, label);
    li++;
  }
  const notes = Object.entries(sw.notes).map(([k, v]) => `${k}: some points refused: ${v}`);
  const ch = sw.changes.map((c) => `at ${sw.x} = ${c.x}: ${c.from || "none fits"} → ${c.to || "none fits"}`);
  $("#sweep-notes").textContent = ["open circles: does not fit", ...ch, ...notes].join("\n");
}

function showCommand() {
  const body = $("#command-body");
  body.innerHTML = "";
  if (!lastEstimate) return;
  for (const [name, text] of Object.entries(lastEstimate.files || {})) {
    const h = document.createElement("h3"); h.textContent = `save as ${name}`;
    const pre = document.createElement("pre"); pre.textContent = text;
    body.append(h, pre);
  }
  for (const r of lastEstimate.rows) {
    const h = document.createElement("h3"); h.textContent = r.label;
    const cmd = document.createElement("pre"); cmd.className = "command"; cmd.textContent = r.command;
    const toml = document.createElement("pre"); toml.className = "toml"; toml.textContent = `# ${r.label}.toml  (aqpim-sim run ${r.label}.toml)\n` + r.toml;
    body.append(h, cmd, toml);
  }
  $("#command-dialog").showModal();
}

async function main() {
  try {
    schema = await (await fetch("/api/schema")).json();
  } catch (err) {
    showError("cannot read /api/schema: " + err.message);
    return;
  }
  buildControls();
  for (const k of ["sweep_x", "sweep_from", "sweep_to", "sweep_points", "sweep_scale"]) {
    const e = document.getElementById(k); e.dataset.initial = e.value;
  }
  const fromUrl = stateFromUrl();
  applyState(fromUrl);
  const known = new Set(Object.keys(readState()));
  extraState = Object.fromEntries(Object.entries(fromUrl).filter(([k]) => !known.has(k) && !document.getElementById("opt-" + k) && !document.getElementById(k) && !["variants", "log", "model_json"].includes(k)));
  // a URL value the page could not show (an unknown preset in a select) still goes to the server as given
  for (const [k, v] of Object.entries(fromUrl)) {
    const input = document.getElementById("opt-" + k);
    if (input && input.tagName === "SELECT" && input.value !== v && k !== "model") extraState[k] = v;
    if (k === "model" && input && input.value !== v) extraState[k] = v;
  }
  await update();
  if (fromUrl.sweep_x) sweep();
}
main();
