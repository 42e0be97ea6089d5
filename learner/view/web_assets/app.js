// Keisei's web view: curves, tables and a board, updated by server-sent events.
"use strict";

const COLORS = ["#b03a2e", "#1f77b4", "#2e7d32", "#8e44ad", "#e67e22", "#16a085", "#7f8c8d"];
const KANJI = { P: "歩", L: "香", N: "桂", S: "銀", G: "金", B: "角", R: "飛", K: "玉",
  "+P": "と", "+L": "杏", "+N": "圭", "+S": "全", "+B": "馬", "+R": "龍" };
const LETTERS = { P: "P", L: "L", N: "N", S: "S", G: "G", B: "B", R: "R", K: "K",
  "+P": "+P", "+L": "+L", "+N": "+N", "+S": "+S", "+B": "+B", "+R": "+R" };
// Without a font that has the pieces' kanji (they would all be empty boxes), letters.
const CJK = hasGlyphs("歩", "香");
const PIECES = CJK ? KANJI : LETTERS;
const HAND_ORDER = ["R", "B", "G", "S", "N", "L", "P"];
const RANKS = "一二三四五六七八九";
const DASHES = [[], [5, 3], [1, 3]];
// The charts, made from the server's list of metric fields (/api/fields) at start.
let CHARTS = [];

function chartsOf(described) {
  const fields = new Map(described.fields.map((field) => [field.name, field]));
  return described.charts.map((chart) => ({
    title: chart.title,
    unit: chart.unit || "",
    fields: chart.fields.map((name) => fields.get(name) || { name, label: name }),
    log: chart.log,
    elo: chart.group === "ratings",
    // an axis for quantities that cannot be negative starts at 0 or above
    nonnegative: chart.fields.every((name) => (fields.get(name) || {}).nonnegative),
  }));
}

const state = {
  runs: [],            // summaries from the server
  shown: new Set(),    // run ids drawn
  data: new Map(),     // run id -> { generation, fields, points }
  fetching: new Set(),
  xAxis: "step",
  range: 1,            // the share of the x axis shown, its newest part (1: all)
  game: null,          // the game on the board
  ply: 0,
  followLive: true,
  live: null,
  connected: false,
  ended: false,        // every run shown has ended: nothing is live
};

const ENDINGS = { finished: "finished", interrupted: "interrupted", failed: "failed", "rank-lost": "a rank was lost" };
const hasEnded = (run) => Boolean(run.state) && run.state !== "running";

const $ = (id) => document.getElementById(id);

// Whether this browser draws `a` and `b` differently: two kanji drawn alike are the same
// empty box, so no installed font has them.
function hasGlyphs(a, b) {
  try {
    const canvas = document.createElement("canvas");
    canvas.width = 40; canvas.height = 40;
    const ctx = canvas.getContext("2d");
    const draw = (text) => {
      ctx.clearRect(0, 0, 40, 40);
      ctx.font = "32px sans-serif";
      ctx.fillText(text, 2, 32);
      return ctx.getImageData(0, 0, 40, 40).data.join(",");
    };
    return draw(a) !== draw(b);
  } catch (error) {
    return true;
  }
}
const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
};
const fmt = (value, digits = 3) => {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en");
  return Number(value.toPrecision(digits)).toString();
};
const duration = (seconds) => {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
};

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// --- runs and curves ---------------------------------------------------------------------------
function takeRuns(runs) {
  const first = state.runs.length === 0;
  state.runs = runs;
  if (first) runs.forEach((run) => state.shown.add(run.id));
  renderRunPicker();
  renderOverview();
  renderTables();
  const ended = runs.length > 0 && runs.every(hasEnded);
  if (ended && !state.ended) setFollow(false);  // a finished run has no live game
  state.ended = ended;
  if (ended) showLastGame();
  $("live-button").hidden = ended;
  showConnection();
  for (const run of runs) {
    const data = state.data.get(run.id);
    if (!data || data.generation !== run.generation || data.points.length < run.points) fetchPoints(run.id);
  }
  renderTimeline();
  // the curves are redrawn when points arrive (fetchPoints); here only when ratings changed
  const ratings = JSON.stringify(runs.map((run) => run.ratings));
  if (ratings !== state.ratingsDrawn) { state.ratingsDrawn = ratings; drawCharts(); }
}

async function fetchPoints(id) {
  if (state.fetching.has(id)) return;
  state.fetching.add(id);
  try {
    for (;;) {
      let data = state.data.get(id);
      const from = data ? data.points.length : 0;
      const query = data ? `gen=${data.generation}&from=${from}` : "from=0";
      const answer = await getJSON(`/api/runs/${id}/metrics?${query}`);
      if (!data || answer.generation !== data.generation || answer.from === 0 && from !== 0) {
        data = { generation: answer.generation, fields: answer.fields, points: [] };
        state.data.set(id, data);
      }
      data.points.push(...answer.points);
      if (answer.points.length === 0 || data.points.length >= answer.total) break;
    }
  } catch (error) {
    console.warn(error);
  } finally {
    state.fetching.delete(id);
  }
  drawCharts();
  renderTimeline();
}

function renderRunPicker() {
  const box = $("runs");
  box.replaceChildren();
  state.runs.forEach((run, index) => {
    const label = el("label", { title: run.path });
    const check = el("input", { type: "checkbox" });
    check.checked = state.shown.has(run.id);
    check.addEventListener("change", () => {
      if (check.checked) state.shown.add(run.id); else state.shown.delete(run.id);
      drawCharts();
    });
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = COLORS[index % COLORS.length];
    label.append(check, swatch, document.createTextNode(run.name));
    box.append(label);
  });
}

function renderOverview() {
  const box = $("overview");
  box.replaceChildren();
  for (const run of state.runs) {
    const item = (name, value, cls) => {
      const span = el("span", { class: "item" });
      span.append(document.createTextNode(`${name} `));
      const b = el("b", cls ? { class: cls } : {}, value);
      span.append(b);
      box.append(span);
    };
    if (state.runs.length > 1) item("run", run.name);
    item("step", run.total_steps && !run.minutes ? `${fmt(run.step)} / ${fmt(run.total_steps)}` : fmt(run.step));
    if (run.minutes) {  // train.minutes: a budget of training time
      item("trained", `${duration(run.train_seconds || 0)} of ${duration(run.minutes * 60)}`);
    }
    item("epoch", fmt(run.epoch));
    item("steps/s", fmt(run.steps_per_second));
    if (run.actor_steps_per_second !== null) item("actors' steps/s", fmt(run.actor_steps_per_second));
    item("mode", run.mode || "—", run.mode ? `mode-${run.mode}` : undefined);
    item("policy", run.policy_version === null || run.policy_version === undefined ? "—" : `v${run.policy_version}`);
    if (hasEnded(run)) {
      item("run", ENDINGS[run.state] || run.state, `ended-${run.state}`);
      if (run.ended) item("ended", `${new Date(run.ended * 1000).toLocaleString()}`);
    } else {
      item("to the end", run.step !== null && run.total_steps && run.step >= run.total_steps
        ? "finished" : duration(run.eta_seconds));  // (a run from before final statuses)
    }
    if (run.seconds_since_epoch !== null && run.seconds_since_epoch !== undefined) {
      item("last epoch", `${duration(run.seconds_since_epoch)} ago`);
    }
    if (run.games !== null && run.games !== undefined) item("games this epoch", fmt(run.games));
  }
}

function renderTables() {
  const run = state.runs[0];
  if (!run) return;
  table($("actors"), ["actor", "host", "state", "steps/s", "policy", "games", "restarts", "dropped", "heard"],
    (run.actors || []).map((a) => [a.actor_id, a.host, a.state, fmt(a.steps_per_second), `v${a.policy_version}`,
      fmt(a.games_received), fmt(a.restarts), fmt(a.steps_dropped), `${fmt(a.seconds_since_heard)} s ago`]),
    (row) => [2, `state-${row[2]}`]);
  const ledger = run.ledger;
  table($("ledger"), ["", "steps"], ledger ? [
    ["carried (resumed)", fmt(ledger.carried)], ["received", fmt(ledger.received)], ["trained", fmt(ledger.trained)],
    ...Object.entries(ledger.dropped || {}).map(([k, v]) => [`dropped: ${k}`, fmt(v)]),
    ["waiting", fmt(ledger.waiting)]] : []);
  const ratings = [...(run.ratings || [])].sort((a, b) => (b.elo ?? -1e9) - (a.elo ?? -1e9));
  table($("ratings"), ["player", "step", "Elo", "± 95%", "games"],
    ratings.map((r) => [r.name, r.step === null || r.step === undefined ? "" : fmt(r.step), fmt(r.elo, 4),
      r.interval === undefined ? "" : fmt(r.interval, 3), fmt(r.games)]));
  const scores = Object.entries(run.ladder || {});
  $("ladder").textContent = scores.length
    ? `newest rated policy's scores: ${scores.map(([name, score]) => `${name} ${fmt(score)}`).join(", ")}` : "";
  table($("transitions"), ["when", "to", "cause"],
    [...(run.transitions || [])].reverse().map((t) => [new Date(t.time * 1000).toLocaleTimeString(), t.mode, t.cause]));
}

function table(node, head, rows, cellClass) {
  node.replaceChildren();
  const tr = el("tr");
  head.forEach((h) => tr.append(el("th", {}, h)));
  node.append(tr);
  if (rows.length === 0) {
    const empty = el("tr");
    empty.append(el("td", { colspan: String(head.length) }, "none yet"));
    node.append(empty);
  }
  for (const row of rows) {
    const line = el("tr");
    row.forEach((value, i) => {
      const td = el("td", {}, value);
      if (cellClass) { const [index, cls] = cellClass(row); if (index === i) td.className = cls; }
      line.append(td);
    });
    node.append(line);
  }
}

function renderTimeline() {
  const box = $("timeline");
  box.replaceChildren();
  const run = state.runs[0];
  if (!run || !run.modes || run.modes.length === 0) return;
  const data = state.data.get(run.id);
  const key = state.xAxis === "step" ? 0 : 1;
  const last = data && data.points.length ? data.points[data.points.length - 1][key] : null;
  const first = run.modes[0][key];
  if (last === null || first === null || last <= first) return;
  run.modes.forEach((change, i) => {
    const start = change[key], end = i + 1 < run.modes.length ? run.modes[i + 1][key] : last;
    if (start === null || end === null) return;
    const span = el("span", { class: change[2], title: `${change[2]} from ${state.xAxis} ${fmt(start)}` });
    span.style.left = `${(100 * (start - first)) / (last - first)}%`;
    span.style.width = `${Math.max(0.3, (100 * (end - start)) / (last - first))}%`;
    box.append(span);
  });
}

function buildCharts() {
  const box = $("charts");
  for (const spec of CHARTS) {
    const card = el("div", { class: "chart", "data-title": spec.title });
    card.append(el("h4", {}, spec.title + (spec.unit ? ` (${spec.unit})` : "")));
    spec.legend = el("div", { class: "legend" });
    spec.flag = el("div", { class: "flag" });
    card.append(spec.legend, spec.flag);
    const canvas = el("canvas", { "data-title": spec.title, "data-points": "0" });
    card.append(canvas);
    spec.readout = el("div", { class: "readout" }, "\u00a0");
    card.append(spec.readout);
    box.append(card);
    spec.card = card;
    spec.canvas = canvas;
    canvas.addEventListener("mousemove", (event) => {
      const box = canvas.getBoundingClientRect();
      spec.hover = event.clientX - box.left;
      drawChart(spec);
    });
    canvas.addEventListener("mouseleave", () => { spec.hover = null; drawChart(spec); });
  }
}

// Widths are read for every chart first, then the charts drawn: reading a width after a
// write to the page would make the browser lay the whole page out again, once a chart.
function drawCharts() {
  for (const spec of CHARTS) spec.width = spec.canvas.clientWidth;
  for (const spec of CHARTS) drawChart(spec);
}

// Write to the page only what changed (an unchanged write still costs a style pass).
function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
function setData(node, key, value) { if (node.dataset[key] !== value) node.dataset[key] = value; }

// Ticks at 1, 2 or 5 times a power of ten, about `count` of them over [low, high].
function niceTicks(low, high, count) {
  const raw = (high - low) / Math.max(1, count);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= raw) || 10 * power;
  const ticks = [];
  for (let value = Math.ceil(low / step - 1e-9) * step; value <= high + step * 1e-9; value += step) {
    ticks.push(Math.abs(value) < step * 1e-9 ? 0 : value);
  }
  return { ticks, step };
}

const NUMBER = new Intl.NumberFormat("en-US", { maximumFractionDigits: 6 });
// A tick's label: thousands separators, as many decimals as the step between ticks needs.
function tickLabel(value, step) {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e15 || magnitude < 1e-6) return value.toExponential(0);
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return value.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

// A decade's label on a log axis: 0.001, 0.01 ... 1,000, then powers of ten.
function decadeLabel(exponent) {
  if (exponent >= -4 && exponent <= 6) return NUMBER.format(Math.pow(10, exponent));
  return `1e${exponent}`;
}

function xLabel(value, step) {
  if (state.xAxis === "step") return tickLabel(value, step);
  return duration(value);
}

// The lines of a chart: per run shown, per field; colours tell fields apart within a run,
// and runs apart when several are shown (then each field has its own dash).
function chartLines(spec) {
  const lines = [];
  const runs = state.runs.filter((run) => state.shown.has(run.id));
  runs.forEach((run, runIndex) => {
    const data = state.data.get(run.id);
    const prefix = runs.length > 1 ? `${run.name}: ` : "";
    if (spec.elo) {
      const rows = (run.ratings || []).filter((r) => r.step !== null && r.step !== undefined && r.elo !== null);
      rows.sort((a, b) => a.step - b.step);
      const xs = rows.map((r) => state.xAxis === "step" ? r.step : stepToTime(data, r.step));
      lines.push({ label: `${prefix}Elo`, color: COLORS[runIndex % COLORS.length], dash: [], xs,
        ys: rows.map((r) => r.elo), bars: rows.map((r) => r.interval ?? 0) });
      return;
    }
    if (!data) return;
    const xKey = data.fields.indexOf(state.xAxis);
    spec.fields.forEach((field, k) => {
      const yKey = data.fields.indexOf(field.name);
      const xs = [], ys = [];
      for (const point of data.points) {
        const x = point[xKey], y = point[yKey];
        if (x === null || x === undefined || y === null || y === undefined || (spec.log && y <= 0)) continue;
        xs.push(x); ys.push(spec.log ? Math.log10(y) : y);
      }
      const color = runs.length > 1 ? COLORS[runIndex % COLORS.length] : COLORS[k % COLORS.length];
      const dash = runs.length > 1 ? DASHES[k % DASHES.length] : [];
      lines.push({ label: prefix + field.label, color, dash, xs, ys });
    });
  });
  return lines;
}

function drawChart(spec) {
  const canvas = spec.canvas;
  const pad = { left: 56, right: 10, top: 8, bottom: 34 };
  const lines = chartLines(spec);
  let xMin = Infinity, xMax = -Infinity;
  for (const line of lines) for (const x of line.xs) {
    if (x === null || x === undefined) continue;
    xMin = Math.min(xMin, x); xMax = Math.max(xMax, x);
  }
  if (state.range < 1 && xMax > xMin) xMin = xMax - (xMax - xMin) * state.range;
  let count = 0, yMin = Infinity, yMax = -Infinity;
  for (const line of lines) {
    line.xs.forEach((x, i) => {
      if (x === null || x === undefined || x < xMin) return;
      const bar = line.bars ? line.bars[i] : 0;
      yMin = Math.min(yMin, line.ys[i] - bar); yMax = Math.max(yMax, line.ys[i] + bar);
      count += 1;
    });
  }
  setData(canvas, "points", String(count));
  if (spec.card.hidden !== (count === 0)) spec.card.hidden = count === 0;  // no data: not shown
  renderLegend(spec, lines.filter((line) => line.xs.length > 0));
  flagHealth(spec, lines);
  if (count === 0) return;
  // sized once shown (a hidden card has no width): the screen's pixels, for high-DPI screens
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(200, spec.width || canvas.clientWidth || 480), height = 160;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  if (xMax === xMin) { xMax += 1; xMin = Math.max(0, xMin - 1); }
  if (yMax === yMin) { yMax += Math.abs(yMax) * 0.1 || 1; yMin -= Math.abs(yMin) * 0.1 || 1; }
  let yTicks, yLabels;
  if (spec.log) {  // decades, or 1-2-5 ticks of the exponent within less than two
    const low = Math.floor(yMin), high = Math.ceil(yMax);
    yMin = low; yMax = high === low ? low + 1 : high;
    const every = Math.max(1, Math.ceil((yMax - yMin) / 5));
    yTicks = [];
    for (let e = yMin; e <= yMax; e += every) yTicks.push(e);
    yLabels = yTicks.map(decadeLabel);
  } else {
    const span = yMax - yMin;
    yMin -= span * 0.05; yMax += span * 0.05;
    if (spec.nonnegative) yMin = Math.max(0, yMin);
    const nice = niceTicks(yMin, yMax, 4);
    yTicks = nice.ticks;
    yMin = Math.min(yMin, yTicks[0]); yMax = Math.max(yMax, yTicks[yTicks.length - 1]);
    yLabels = yTicks.map((value) => tickLabel(value, nice.step));
  }
  ctx.font = "11px system-ui, sans-serif";  // the y labels' width sets the left margin
  pad.left = Math.max(40, Math.ceil(Math.max(...yLabels.map((label) => ctx.measureText(label).width))) + 10);
  const X = (x) => pad.left + ((x - xMin) / (xMax - xMin)) * (width - pad.left - pad.right);
  const Y = (y) => height - pad.bottom - ((y - yMin) / (yMax - yMin)) * (height - pad.top - pad.bottom);
  const band = healthyBand(spec);
  if (band) {  // where a healthy run stays, shaded
    const axis = (value) => spec.log ? Math.log10(value) : value;
    const top = band.high === null ? yMax : Math.min(yMax, axis(band.high));
    const bottom = band.low === null ? yMin : Math.max(yMin, axis(band.low));
    if (top > bottom) {
      ctx.fillStyle = "rgba(46, 125, 50, 0.08)";
      ctx.fillRect(pad.left, Y(top), width - pad.left - pad.right, Y(bottom) - Y(top));
    }
  }
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  yTicks.forEach((tick, i) => {
    ctx.strokeStyle = "#e4e4e4";
    ctx.beginPath(); ctx.moveTo(pad.left, Y(tick)); ctx.lineTo(width - pad.right, Y(tick)); ctx.stroke();
    ctx.fillStyle = "#666";
    const label = yLabels[i];
    ctx.fillText(label, pad.left - 4 - ctx.measureText(label).width, Y(tick) + 4);
  });
  const xNice = state.xAxis === "step" ? niceTicks(xMin, xMax, Math.max(2, Math.floor(width / 110)))
    : timeTicks(xMin, xMax, Math.max(2, Math.floor(width / 110)));
  const xLabels = [];
  for (const tick of xNice.ticks) {
    if (tick < xMin || tick > xMax) continue;
    const label = xLabel(tick, xNice.step);
    xLabels.push(label);
    ctx.strokeStyle = "#ccc";
    ctx.beginPath(); ctx.moveTo(X(tick), height - pad.bottom); ctx.lineTo(X(tick), height - pad.bottom + 4); ctx.stroke();
    ctx.fillStyle = "#666";
    const w = ctx.measureText(label).width;
    ctx.fillText(label, Math.min(width - w - 2, Math.max(pad.left - w / 2, X(tick) - w / 2)), height - pad.bottom + 15);
  }
  const title = state.xAxis === "step" ? "training steps (plies)" : "wall-clock since the first epoch";
  ctx.fillStyle = "#888";
  ctx.fillText(title, pad.left + (width - pad.left - pad.right) / 2 - ctx.measureText(title).width / 2, height - 3);
  setData(canvas, "yTicks", JSON.stringify(yLabels));
  setData(canvas, "xTicks", JSON.stringify(xLabels));
  ctx.save();
  ctx.beginPath(); ctx.rect(pad.left, 0, width - pad.left - pad.right, height - pad.bottom); ctx.clip();
  for (const line of lines) {
    ctx.strokeStyle = line.color; ctx.fillStyle = line.color; ctx.lineWidth = 1.6; ctx.setLineDash(line.dash);
    ctx.beginPath();
    let started = false;
    line.xs.forEach((x, i) => {
      if (x === null || x === undefined) return;
      if (!started) { ctx.moveTo(X(x), Y(line.ys[i])); started = true; } else ctx.lineTo(X(x), Y(line.ys[i]));
    });
    ctx.stroke();
    ctx.setLineDash([]);
    if (line.bars || line.xs.length === 1) {
      line.xs.forEach((x, i) => {
        if (x === null || x === undefined) return;
        if (line.bars) {
          ctx.beginPath();
          ctx.moveTo(X(x), Y(line.ys[i] - line.bars[i])); ctx.lineTo(X(x), Y(line.ys[i] + line.bars[i]));
          ctx.stroke();
        }
        ctx.fillRect(X(x) - 2, Y(line.ys[i]) - 2, 4, 4);
      });
    }
  }
  ctx.restore();
  showReadout(spec, lines, X, xMin, xMax, ctx, height - pad.bottom, pad.left, width - pad.right);
}

// Ticks on a wall-clock axis: at 1-2-5 multiples of a second, minute or hour.
function timeTicks(low, high, count) {
  const raw = (high - low) / Math.max(1, count);
  const units = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const step = units.find((unit) => unit >= raw) || Math.ceil(raw / 86400) * 86400;
  const ticks = [];
  for (let value = Math.ceil(low / step) * step; value <= high; value += step) ticks.push(value);
  return { ticks, step };
}

const HEALTH_NOTE = "A KL from the pre-update policy above 0.05, or a clip fraction above 0.3, "
  + "says the update's steps are too large; an explained variance below 0 says the value head "
  + "predicts the returns worse than their mean does. See docs/guides/learning.md and "
  + "docs/results/2026-12-04-update-health.md.";

// The band a healthy run stays in (``learner.fields``), if the chart's fields have one.
function healthyBand(spec) {
  const lows = spec.fields.map((field) => field.low).filter((value) => value !== null && value !== undefined);
  const highs = spec.fields.map((field) => field.high).filter((value) => value !== null && value !== undefined);
  if (!lows.length && !highs.length) return null;
  return { low: lows.length ? Math.max(...lows) : null, high: highs.length ? Math.min(...highs) : null };
}

// Flag a chart whose newest values (each run's, each field's) left the healthy band.
function flagHealth(spec, lines) {
  const band = healthyBand(spec);
  const outside = [];
  if (band) {
    for (const line of lines) {
      if (!line.xs.length) continue;
      const value = spec.log ? Math.pow(10, line.ys[line.ys.length - 1]) : line.ys[line.ys.length - 1];
      if (band.high !== null && value > band.high) outside.push(`${line.label} ${fmt(value, 3)} > ${fmt(band.high)}`);
      else if (band.low !== null && value < band.low) outside.push(`${line.label} ${fmt(value, 3)} < ${fmt(band.low)}`);
    }
  }
  if (spec.card.classList.contains("unhealthy") !== outside.length > 0) {
    spec.card.classList.toggle("unhealthy", outside.length > 0);
  }
  setText(spec.flag, outside.length ? `outside the healthy band: ${outside.join(", ")}` : "");
  if (outside.length && !spec.flag.title) spec.flag.title = HEALTH_NOTE;
  setData(spec.card, "health", outside.length ? "outside" : band ? "within" : "");
}

function renderLegend(spec, lines) {
  const key = JSON.stringify(lines.map((line) => [line.label, line.color, line.dash]));
  if (spec.legendKey === key) return;
  spec.legendKey = key;
  spec.legend.replaceChildren(...lines.map((line) => {
    const item = el("span", { class: "key" });
    const swatch = el("span", { class: "swatch" + (line.dash.length ? " dashed" : "") });
    swatch.style.borderColor = line.color;
    item.append(swatch, document.createTextNode(line.label));
    return item;
  }));
}

// Under the pointer: a rule at the nearest step and every line's value there.
function showReadout(spec, lines, X, xMin, xMax, ctx, bottom, left, right) {
  if (spec.hover === null || spec.hover === undefined || spec.hover < left || spec.hover > right) {
    setText(spec.readout, "\u00a0");
    return;
  }
  const x = xMin + ((spec.hover - left) / (right - left)) * (xMax - xMin);
  let nearest = null;
  for (const line of lines) for (const candidate of line.xs) {
    if (candidate === null || candidate === undefined || candidate < xMin) continue;
    if (nearest === null || Math.abs(candidate - x) < Math.abs(nearest - x)) nearest = candidate;
  }
  if (nearest === null) return;
  ctx.strokeStyle = "#999"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(X(nearest), 0); ctx.lineTo(X(nearest), bottom); ctx.stroke();
  const parts = [];
  for (const line of lines) {
    const i = line.xs.indexOf(nearest);
    if (i < 0) continue;
    const value = spec.log ? Math.pow(10, line.ys[i]) : line.ys[i];
    parts.push(`${line.label} ${fmt(value, 4)}` + (line.bars ? ` ± ${fmt(line.bars[i], 3)}` : ""));
  }
  const where = state.xAxis === "step" ? `step ${NUMBER.format(nearest)}` : duration(nearest);
  spec.readout.textContent = `${where}: ${parts.join(", ")}`;
}

function stepToTime(data, step) {
  if (!data) return null;
  for (const point of data.points) if (point[0] >= step) return point[1];
  return null;
}

// --- the board -----------------------------------------------------------------------------------
function parseSfen(sfen) {
  const [placement, turn, hands] = sfen.split(" ");
  const cells = [];
  for (const row of placement.split("/")) {
    const line = [];
    for (let i = 0; i < row.length; i++) {
      const c = row[i];
      if (c >= "1" && c <= "9") { for (let k = 0; k < Number(c); k++) line.push(null); continue; }
      let piece = c;
      if (c === "+") { piece = "+" + row[++i]; }
      const upper = piece.toUpperCase();
      line.push({ kind: upper, white: piece !== upper });
    }
    cells.push(line);
  }
  const hand = { black: {}, white: {} };
  if (hands && hands !== "-") {
    let count = "";
    for (const c of hands) {
      if (c >= "0" && c <= "9") { count += c; continue; }
      const side = c === c.toUpperCase() ? hand.black : hand.white;
      side[c.toUpperCase()] = (side[c.toUpperCase()] || 0) + (count ? Number(count) : 1);
      count = "";
    }
  }
  return { cells, turn, hand };
}

function square(usi) { // "7f" -> [row, col]
  return [usi.charCodeAt(1) - 97, 9 - Number(usi[0])];
}

function moveLabel(game, index) {
  const usi = game.moves[index];
  const before = parseSfen(game.sfens[index]);
  const mark = before.turn === "b" ? "☗" : "☖";
  if (!CJK) {  // P-7f, B*5e, Sx4c+ (from the USI squares)
    if (usi[1] === "*") return `${mark}${usi[0]}*${usi.slice(2, 4)}`;
    const [fromRow, fromCol] = square(usi.slice(0, 2));
    const piece = before.cells[fromRow][fromCol];
    const [toRow, toCol] = square(usi.slice(2, 4));
    const takes = before.cells[toRow][toCol] ? "x" : "-";
    return `${mark}${piece ? LETTERS[piece.kind] : "?"}${takes}${usi.slice(2, 4)}${usi.endsWith("+") ? "+" : ""}`;
  }
  const to = usi.slice(2, 4);
  const previous = index > 0 ? game.moves[index - 1].slice(2, 4) : null;
  const where = to === previous ? "同" : `${to[0]}${RANKS[to.charCodeAt(1) - 97]}`;
  if (usi[1] === "*") return `${mark}${where}${PIECES[usi[0]]}打`;
  const [row, col] = square(usi.slice(0, 2));
  const piece = before.cells[row][col];
  const name = piece ? PIECES[piece.kind] : "?";
  return `${mark}${where}${name}${usi.endsWith("+") ? "成" : ""}`;
}

function showGame(game, keepPly) {
  const previous = state.game;
  const sameGame = previous && game && previous.key === game.key && previous.path === game.path;
  // the same game, a few moves on (a game being played): only the new moves are added
  const extended = sameGame && previous.labels && game.moves.length >= previous.moves.length;
  state.game = game;
  if (!game) { renderBoard(); return; }
  const list = $("move-list");
  const from = extended ? previous.labels.length : 0;
  game.labels = (extended ? previous.labels : []).concat(
    game.moves.slice(from).map((_, i) => moveLabel(game, from + i)));
  if (!sameGame || !keepPly) state.ply = game.moves.length;
  state.ply = Math.min(state.ply, game.moves.length);
  $("game-source").textContent = game.source || (game.path ? game.path : "");
  $("player-black").textContent = `☗ ${game.black ? personName(game.black) : "Keisei (self-play)"}`;
  $("player-white").textContent = `☖ ${game.white ? personName(game.white) : "Keisei (self-play)"}`;
  $("game-result").textContent = game.live ? "being played" : (game.result || "");
  if (!extended) list.replaceChildren();
  game.labels.slice(from).forEach((label, k) => {
    const i = from + k;
    const li = el("li", { "data-ply": String(i + 1) }, `${i + 1}. ${label}`);
    li.addEventListener("click", () => { setFollow(false); state.ply = i + 1; renderBoard(); });
    list.append(li);
  });
  renderBoard();
}

function renderBoard() {
  const game = state.game;
  const board = $("board");
  board.replaceChildren();
  const sfen = game ? game.sfens[state.ply] : "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1";
  const position = parseSfen(sfen);
  const lastMove = game && state.ply > 0 ? game.moves[state.ply - 1] : null;
  const to = lastMove ? square(lastMove.slice(2, 4)) : null;
  const from = lastMove && lastMove[1] !== "*" ? square(lastMove.slice(0, 2)) : null;
  position.cells.forEach((line, row) => line.forEach((piece, col) => {
    const classes = ["cell"];
    if (piece && piece.white) classes.push("white");
    if (piece && piece.kind.startsWith("+")) classes.push("promoted");
    if (to && to[0] === row && to[1] === col) classes.push("last-to");
    if (from && from[0] === row && from[1] === col) classes.push("last-from");
    const text = piece ? (piece.kind === "K" && piece.white && CJK ? "王" : PIECES[piece.kind]) : "";
    board.append(el("div", { class: classes.join(" ") }, text));
  }));
  for (const color of ["black", "white"]) {
    const hand = position.hand[color];
    const parts = HAND_ORDER.filter((k) => hand[k]).map((k) => hand[k] > 1 ? `${PIECES[k]}${hand[k]}` : PIECES[k]);
    $(`hand-${color}`).textContent = parts.join(" ") || (CJK ? "なし" : "-");
  }
  const plies = game ? game.moves.length : 0;
  const count = $("ply-count");
  count.textContent = `${state.ply} / ${plies}`;
  board.dataset.ply = String(state.ply);
  board.dataset.plies = String(plies);
  board.dataset.game = game ? (game.key || game.path || "") : "";
  const list = $("move-list");
  const before = list.querySelector("li.current");
  const current = state.ply > 0 ? list.children[state.ply - 1] : null;
  if (before !== current) {
    if (before) before.classList.remove("current");
    if (current) {
      current.classList.add("current");
      if (state.followLive) list.scrollTop = Math.max(0, current.offsetTop - list.offsetTop - list.clientHeight / 2);
    }
  }
  drawValues();
}

function drawValues() {
  const canvas = $("value-chart");
  const ctx = canvas.getContext("2d");
  const width = canvas.width, height = canvas.height;
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#777";
  const game = state.game;
  const values = game && game.values ? game.values : [];
  canvas.dataset.points = String(values.length);
  if (!values.length) {  // say why
    ctx.fillText(game ? (game.live ? "no evaluations yet"
      : "no evaluations: a saved record keeps only the moves") : "", 8, height / 2);
    return;
  }
  const X = (i) => 4 + (i / Math.max(1, values.length - 1)) * (width - 8);
  const Y = (v) => height / 2 - v * (height / 2 - 6);
  ctx.strokeStyle = "#ccc"; ctx.beginPath(); ctx.moveTo(0, Y(0)); ctx.lineTo(width, Y(0)); ctx.stroke();
  ctx.fillText("value for black (+1 black wins)", 6, 12);
  ctx.strokeStyle = "#b03a2e"; ctx.lineWidth = 1.5; ctx.beginPath();
  values.forEach((v, i) => { if (v === null) return; if (i === 0) ctx.moveTo(X(i), Y(v)); else ctx.lineTo(X(i), Y(v)); });
  ctx.stroke();
  if (state.ply > 0) {
    ctx.strokeStyle = "#333"; ctx.lineWidth = 1;
    const x = X(Math.min(values.length - 1, state.ply - 1));
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, height); ctx.stroke();
  }
}

// A game being played shows its newest position; a finished one that was delivered whole
// (from actors) is played back from the start, four plies a second.
let playback = null;
function followLive() {
  const game = state.live;
  if (playback) { clearInterval(playback); playback = null; }
  if (!game) { showGame(null); return; }
  showGame(game, false);
  if (game.live || game.moves.length === 0) return;
  state.ply = 0;
  renderBoard();
  playback = setInterval(() => {
    if (!state.followLive || state.game !== game || state.ply >= game.moves.length) {
      clearInterval(playback); playback = null; return;
    }
    state.ply += 1;
    renderBoard();
  }, 250);
}

// A run that ended: its newest game at its end, once (nothing is followed or replayed).
function showLastGame() {
  if (state.game || !state.live) return;
  showGame(state.live, false);
  state.ply = state.live.moves.length;
  renderBoard();
}

function setFollow(on) {
  state.followLive = on;
  $("live-button").classList.toggle("on", on);
  if (on) followLive();
}

function step(delta) {
  if (!state.game) return;
  setFollow(false);
  state.ply = Math.max(0, Math.min(state.game.moves.length, state.ply + delta));
  renderBoard();
}

// --- the games browser: grouped, named for people, filtered and paged in the page ------------
const GAMES_PER_PAGE = 25;

// step-000000081920 -> step 81,920 (as the server names players in the list)
function personName(name) {
  const match = /^step-(\d+)$/.exec(name);
  return match ? `step ${fmt(Number(match[1]))}` : name;
}

function gameTitle(game) {
  if (!game.black) return `${game.name}${game.unread ? ` (${game.unread})` : ""}`;
  let result = game.result || "";
  if (game.winner) {  // "white wins by checkmate" -> "greedy ☖ wins by checkmate"
    const name = game.winner === "black" ? `${game.black} ☗` : `${game.white} ☖`;
    result = result.replace(/^(black|white) wins/, `${name} wins`);
  }
  return `${game.black} ☗ vs ${game.white} ☖ — ${result}, ${fmt(game.plies)} plies`;
}

async function refreshGameList() {
  const run = state.runs[0];
  if (!run) return;
  try {
    const answer = await getJSON(`/api/runs/${run.id}/games`);
    const key = JSON.stringify(answer.games);
    if (key === state.gamesKey) return;  // nothing new: the list stays as it is
    state.gamesKey = key;
    state.games = answer.games.map((game) => ({ ...game, run: run.id, title: gameTitle(game) }));
    renderGameGroups();
    renderGameList();
  } catch (error) { console.warn(error); }
}

function renderGameGroups() {
  const select = $("game-group");
  const chosen = select.value;
  const groups = [...new Set(state.games.map((game) => game.group))];
  select.replaceChildren(el("option", { value: "" }, `all groups (${fmt(state.games.length)})`),
    ...groups.map((group) => el("option", { value: group },
      `${group} (${fmt(state.games.filter((game) => game.group === group).length)})`)));
  if (groups.includes(chosen)) select.value = chosen;
}

function shownGames() {
  const group = $("game-group").value;
  const words = $("game-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  return state.games.filter((game) => (!group || game.group === group)
    && words.every((word) => `${game.title} ${game.group}`.toLowerCase().includes(word)));
}

function renderGameList() {
  const games = shownGames();
  const pages = Math.max(1, Math.ceil(games.length / GAMES_PER_PAGE));
  state.gamePage = Math.min(state.gamePage || 0, pages - 1);
  const first = state.gamePage * GAMES_PER_PAGE;
  const list = $("game-list");
  list.replaceChildren(...games.slice(first, first + GAMES_PER_PAGE).map((game) => {
    const item = el("li", { "data-path": game.path, "data-group": game.group, title: game.path });
    item.append(el("span", { class: "group" }, game.group), el("span", { class: "title" }, game.title));
    if (state.game && state.game.path === game.path) item.classList.add("current");
    item.addEventListener("click", () => openGame(`${game.run}|${game.path}`));
    return item;
  }));
  if (!games.length) list.append(el("li", { class: "none" }, state.games.length ? "no game matches" : "none yet"));
  $("games-page").textContent = games.length
    ? `${fmt(first + 1)}–${fmt(Math.min(games.length, first + GAMES_PER_PAGE))} of ${fmt(games.length)}` : "";
  $("games-prev").disabled = state.gamePage === 0;
  $("games-next").disabled = state.gamePage >= pages - 1;
}

function turnGamePage(delta) {
  state.gamePage = (state.gamePage || 0) + delta;
  renderGameList();
}

async function openGame(value) {
  const cut = value.indexOf("|");
  const id = value.slice(0, cut), path = value.slice(cut + 1);
  const game = await getJSON(`/api/runs/${id}/game?path=${encodeURIComponent(path)}`);
  setFollow(false);
  showGame(game, false);
  state.ply = 0;
  renderBoard();
  renderGameList();  // marks it
}

// --- wiring ------------------------------------------------------------------------------------
// "live" while a run goes; how it ended once every run shown has (the page stays connected,
// and says so again if one is resumed)
function showConnection() {
  if (!state.connected) return;
  const status = $("connection");
  if (state.ended) {
    const states = [...new Set(state.runs.map((run) => ENDINGS[run.state] || run.state))];
    status.textContent = states.join(", ");
    status.className = `connection ended ended-${state.runs[0].state}`;
  } else {
    status.textContent = "live";
    status.className = "connection live";
  }
}

function connect() {
  const status = $("connection");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { state.connected = true; showConnection(); });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "connection"; });
  source.addEventListener("runs", (event) => { takeRuns(JSON.parse(event.data).runs); refreshGameList(); });
  source.addEventListener("live", (event) => {
    state.live = JSON.parse(event.data);
    if (state.ended) showLastGame();
    else if (state.followLive) followLive();
  });
}

async function start() {
  try {
    CHARTS = chartsOf(await getJSON("/api/fields"));
  } catch (error) {
    console.warn(error);
  }
  buildCharts();
  renderBoard();
  $("x-axis").addEventListener("change", (event) => { state.xAxis = event.target.value; drawCharts(); renderTimeline(); });
  $("x-range").addEventListener("change", (event) => { state.range = Number(event.target.value); drawCharts(); });
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(drawCharts, 150); });
  $("live-button").addEventListener("click", () => setFollow(!state.followLive));
  $("first").addEventListener("click", () => step(-1e9));
  $("back").addEventListener("click", () => step(-1));
  $("forward").addEventListener("click", () => step(1));
  $("last").addEventListener("click", () => step(1e9));
  $("game-group").addEventListener("change", () => { state.gamePage = 0; renderGameList(); });
  $("game-filter").addEventListener("input", () => { state.gamePage = 0; renderGameList(); });
  $("games-prev").addEventListener("click", () => turnGamePage(-1));
  $("games-next").addEventListener("click", () => turnGamePage(1));
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "SELECT") return;
    if (event.key === "ArrowLeft") step(-1);
    if (event.key === "ArrowRight") step(1);
  });
  connect();
}

start();
