// KT Studio's live curves: loss (left) and accuracy (right) drawn on one canvas; a multi-task
// run's learnt task weights in a third panel.
//
// Streamlit calls this function with new `data` at every poll of a running run. The canvas and
// the legend stay in the page between calls, so an update costs one canvas redraw (a few ms)
// instead of a Plotly re-layout of the whole figure (see ui/live_chart.py for why).
//
// data = {title, x_max, height, traces: [{name, panel, x, y, color, dash, width, opacity, markers}]}

const PAD = { left: 48, right: 14, top: 26, bottom: 34, gap: 56 };
const INK = "#374151", GRID = "#e5e7eb", FONT = "12px sans-serif";

function niceStep(span, count) {
  const raw = span / Math.max(1, count), mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

function ticks(max, count) {
  const step = niceStep(max, count), out = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function fmt(value, percent) {
  if (percent) return `${Math.round(value * 100)}%`;
  return Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toPrecision(3)).toString();
}

function drawPanel(ctx, box, title, traces, xMax, percent) {
  let yMax = percent ? 1.02 : 0;
  if (!percent) {
    for (const t of traces) for (const y of t.y) if (Number.isFinite(y) && y > yMax) yMax = y;
    yMax = yMax > 0 ? yMax * 1.05 : 1;
  }
  const X = (x) => box.x + (x / xMax) * box.w;
  const Y = (y) => box.y + box.h - (Math.min(Math.max(y, 0), yMax) / yMax) * box.h;

  ctx.font = FONT; ctx.fillStyle = INK; ctx.strokeStyle = GRID; ctx.lineWidth = 1;
  ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  ctx.fillText(title, box.x + box.w / 2, box.y - 8);
  ctx.textBaseline = "top";
  for (const v of ticks(xMax, Math.max(2, Math.floor(box.w / 70)))) {
    ctx.fillText(fmt(v, false), X(v), box.y + box.h + 6);
  }
  ctx.fillText("epoch", box.x + box.w / 2, box.y + box.h + 20);
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const v of percent ? [0, 0.2, 0.4, 0.6, 0.8, 1] : ticks(yMax, 5)) {
    if (v > yMax) continue;
    ctx.beginPath(); ctx.moveTo(box.x, Y(v)); ctx.lineTo(box.x + box.w, Y(v)); ctx.stroke();
    ctx.fillText(fmt(v, percent), box.x - 6, Y(v));
  }

  ctx.save();
  ctx.beginPath(); ctx.rect(box.x - 4, box.y - 4, box.w + 8, box.h + 8); ctx.clip();
  for (const t of traces) {
    ctx.globalAlpha = t.opacity; ctx.strokeStyle = t.color; ctx.fillStyle = t.color; ctx.lineWidth = t.width;
    ctx.setLineDash(t.dash === "dot" ? [2, 3] : t.dash === "dash" ? [6, 4] : []);
    ctx.beginPath();
    t.x.forEach((x, i) => (i ? ctx.lineTo(X(x), Y(t.y[i])) : ctx.moveTo(X(x), Y(t.y[i]))));
    ctx.stroke();
    // A lone point (the first step of a run) is no line at all: mark it, so it is seen at once.
    if ((t.markers && t.x.length <= 60) || t.x.length === 1) {  // past 60, dots hide the line
      t.x.forEach((x, i) => { ctx.beginPath(); ctx.arc(X(x), Y(t.y[i]), 3, 0, 2 * Math.PI); ctx.fill(); });
    }
  }
  ctx.restore();
  ctx.globalAlpha = 1; ctx.setLineDash([]);
}

function legend(root, traces) {
  // Built from text nodes, never innerHTML: trace names carry run names that users typed.
  root.replaceChildren(...traces.map((t) => {
    const item = document.createElement("span"), glyph = document.createElement("i");
    const value = document.createElement("b");
    item.className = "item";
    glyph.style.borderTop = `${Math.max(2, t.width)}px ${t.dash === "dot" ? "dotted" : t.dash === "dash" ? "dashed" : "solid"} ${t.color}`;
    glyph.style.opacity = String(Math.max(t.opacity, 0.5));
    value.textContent = t.y.length ? fmt(t.y[t.y.length - 1], t.panel === 1) : "–";
    item.append(glyph, `${t.name}: `, value);
    return item;
  }));
}

function draw(root, data) {
  const traces = data.traces || [];
  // What the page shows, for tests and for anyone reading the DOM: points per trace.
  root.dataset.points = JSON.stringify(Object.fromEntries(traces.map((t) => [t.name, t.x.length])));
  root.querySelector(".title").textContent = data.title || "";

  const canvas = root.querySelector("canvas");
  const width = Math.max(320, root.clientWidth || 640), height = data.height || 380;
  const scale = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * scale) || canvas.height !== Math.round(height * scale)) {
    canvas.width = Math.round(width * scale); canvas.height = Math.round(height * scale);
    canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.clearRect(0, 0, width, height);

  let xMax = data.x_max || 1;
  for (const t of traces) for (const x of t.x) if (x > xMax) xMax = x;
  // A third panel, the learnt task weights of a multi-task run, only when there are any.
  const titles = ["Loss", "Accuracy"].concat(traces.some((t) => t.panel === 2) ? ["Task weights"] : []);
  const n = titles.length;
  const w = (width - PAD.left * n - PAD.right - PAD.gap * (n - 1)) / n, h = height - PAD.top - PAD.bottom;
  titles.forEach((title, i) => {
    const box = { x: PAD.left * (i + 1) + i * (w + PAD.gap), y: PAD.top, w, h };
    drawPanel(ctx, box, title, traces.filter((t) => t.panel === i), xMax, i === 1);
  });
  legend(root.querySelector(".legend"), traces);
}

export default function ({ data, parentElement }) {
  let root = parentElement.querySelector(".kt-live");
  if (!root) {
    root = document.createElement("div");
    root.className = "kt-live";
    root.innerHTML = '<div class="title"></div><canvas></canvas><div class="legend"></div>';
    parentElement.appendChild(root);
    // A narrower or wider page (window, sidebar) redraws the last data at once, not at the next poll.
    let lastWidth = 0;
    new ResizeObserver(() => {
      if (root.clientWidth !== lastWidth && root.kt_data) { lastWidth = root.clientWidth; draw(root, root.kt_data); }
    }).observe(root);
  }
  root.kt_data = data;
  draw(root, data);
}
