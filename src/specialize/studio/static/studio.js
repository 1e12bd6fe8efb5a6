// specialize studio: the few interactive parts of server-rendered pages. No framework, no network
// beyond the studio itself.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// ---------------------------------------------------------------- loss curves (inline SVG, live)

function drawLoss(figure, points) {
  figure.querySelectorAll("svg").forEach((s) => s.remove());
  const W = 640, H = 220, L = 48, R = 12, T = 10, B = 28;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "loss curves" }, figure);
  const train = points.filter((p) => p.loss != null).map((p) => [p.step, p.loss]);
  const val = points.filter((p) => p.eval_loss != null).map((p) => [p.step, p.eval_loss]);
  const all = train.concat(val);
  if (!all.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, svg).textContent = "no loss logged yet";
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(0, ...ys), y1 = Math.max(...ys) * 1.05 || 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    el("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, svg).textContent = y.toFixed(2);
  }
  el("text", { x: L, y: H - 8, class: "tick" }, svg).textContent = `step ${x0}`;
  el("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "tick" }, svg).textContent = `${x1}`;
  for (const [series, cls] of [[train, "train"], [val, "val"]]) {
    if (!series.length) continue;
    el("polyline", { points: series.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), class: `line ${cls}` }, svg);
    if (cls === "val") series.forEach((p) => el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, class: "dot val" }, svg));
  }
}

function setupLoss() {
  const figure = document.getElementById("loss-chart");
  if (!figure) return;
  let points = JSON.parse(document.getElementById("loss-points").textContent || "[]");
  drawLoss(figure, points);
  if (figure.dataset.live !== "1" || !window.EventSource) return;
  // The stream replays metrics.jsonl from its start, then follows it until training ends.
  let replay = [];
  const source = new EventSource(figure.dataset.stream);
  source.onmessage = (event) => {
    replay.push(JSON.parse(event.data));
    if (replay.length >= points.length) { points = replay; drawLoss(figure, points); }
  };
  source.addEventListener("reset", () => { replay = []; });
  source.addEventListener("done", (event) => {
    source.close();
    const status = document.getElementById("status");
    if (status) { status.textContent = JSON.parse(event.data); status.className = `badge ${status.textContent}`; }
    drawLoss(figure, replay);
  });
}

// ------------------------------------------------------------------ examples table and confusions

function setupExamples() {
  const table = document.getElementById("examples");
  if (!table) return;
  const kind = document.getElementById("filter-kind");
  const contender = document.getElementById("filter-contender");
  const label = document.getElementById("filter-label");
  const count = document.getElementById("filter-count");
  const clear = document.getElementById("filter-clear");
  let cell = null; // {contender index, reference, reply} from a clicked confusion cell
  const rows = Array.from(table.tBodies[0].rows);

  function apply() {
    let shown = 0;
    for (const row of rows) {
      const wrong = row.dataset.wrong ? row.dataset.wrong.split("\t") : [];
      let ok = kind.value !== "errors" || wrong.includes(contender.value);
      if (ok && label && label.value) ok = row.dataset.label === label.value;
      if (ok && cell) ok = row.dataset.label === cell.reference && row.getAttribute(`data-reply-${cell.index}`) === cell.reply;
      row.hidden = !ok;
      if (ok) shown++;
    }
    count.textContent = `${shown} of ${rows.length} rows`;
    clear.hidden = !cell;
  }
  [kind, contender, label].forEach((s) => s && s.addEventListener("change", apply));
  clear.addEventListener("click", () => { cell = null; apply(); });

  const picker = document.getElementById("confusion-of");
  const names = Array.from(contender.options).map((o) => o.value);
  if (picker) {
    const show = () => document.querySelectorAll("div.confusion-wrap").forEach((t) => { t.hidden = t.dataset.contender !== picker.value; });
    picker.addEventListener("change", show);
    picker.value = contender.value;
    show();
    document.querySelectorAll("table.confusion td.cell").forEach((td) => td.addEventListener("click", () => {
      const of = td.closest("table").dataset.contender;
      cell = { index: names.indexOf(of), reference: td.dataset.reference, reply: td.dataset.reply };
      kind.value = "all";
      if (label) label.value = "";
      apply();
      table.scrollIntoView({ behavior: "smooth", block: "start" });
    }));
  }
  apply();
}

// ------------------------------------------------------------------------------------ review keys

function setupReview() {
  const form = document.getElementById("judge");
  if (!form) return;
  const verdict = document.getElementById("verdict");
  const send = (key) => { verdict.value = key; form.submit(); };
  form.querySelectorAll("button[data-verdict]").forEach((b) => b.addEventListener("click", () => send(b.dataset.verdict)));
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement) {
      if (event.key === "Escape") event.target.blur();
      return; // typing a corrected reply never answers; Escape leaves the box, then press a key
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (["1", "2", "t", "b"].includes(key)) { event.preventDefault(); send(key); }
  });
}

// ------------------------------------------------------------------------------------- playground

function setupPlayground() {
  const form = document.getElementById("playground");
  if (!form) return;
  const message = document.getElementById("message");
  const chat = document.getElementById("chat");
  const button = document.getElementById("send");
  async function send() {
    const text = message.value.trim();
    if (!text) return;
    const body = { run: form.run.value, model: form.model.value, free: form.free.checked, max_new_tokens: Number(form.max_new_tokens.value), text };
    const turn = document.createElement("div");
    turn.className = "turn";
    turn.innerHTML = "<p class='you'></p><pre class='bot'>…</pre><p class='muted meta'></p>";
    turn.querySelector(".you").textContent = text;
    chat.prepend(turn);
    button.disabled = true;
    try {
      const response = await fetch("/api/playground", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || data.detail || response.statusText);
      turn.querySelector(".bot").textContent = data.text;
      turn.querySelector(".meta").textContent = `${data.model}${data.constrained ? ", under the output contract" : ", free"} · ${data.prompt_tokens} prompt + ${data.completion_tokens} completion tokens · ${data.latency_ms.toFixed(0)} ms`;
    } catch (error) {
      turn.querySelector(".bot").textContent = `error: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }
  button.addEventListener("click", send);
  message.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
}

document.addEventListener("DOMContentLoaded", () => { setupLoss(); setupExamples(); setupReview(); setupPlayground(); });
