// A small hand-written SVG line chart: per-epoch curves (loss, F1) without a charting library.

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Round axis steps (1, 2, 5 x 10^n), as people read them.
function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
}

function ticks(min, max, count) {
  const step = niceStep(max - min || 1, count);
  const first = Math.ceil(min / step - 1e-9) * step;
  const out = [];
  for (let value = first; value <= max + step * 1e-6; value += step) out.push(Number(value.toPrecision(12)));
  return out;
}

function label(value) {
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 0.01 || abs >= 10000)) return value.toExponential(1);
  return String(Number(value.toFixed(3)));
}

/**
 * lineChart({title, series: [{name, colour, points: [[x, y], ...]}], yMin, yMax, xLabel})
 * returns a <figure> holding an <svg>. Points with a null y are skipped.
 */
export function lineChart({ title, series, yMin, yMax, xMax, xLabel = "epoch", width = 440, height = 250 }) {
  const margin = { top: 12, right: 16, bottom: 38, left: 48 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const clean = series.map((s) => ({
    ...s,
    points: s.points.filter(([x, y]) => Number.isFinite(x) && y !== null && y !== undefined && Number.isFinite(y)),
  }));
  const xs = clean.flatMap((s) => s.points.map(([x]) => x));
  const ys = clean.flatMap((s) => s.points.map(([, y]) => y));

  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  figure.append(caption, root);
  if (!xs.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, "no data yet"));
    return figure;
  }

  let x0 = Math.min(...xs);
  // xMax: the planned last epoch, so a running run's curves grow into a fixed frame.
  let x1 = Math.max(...xs, xMax ?? -Infinity);
  if (x0 === x1) {
    x0 -= 1;
    x1 += 1;
  }
  let y0 = yMin ?? Math.min(0, ...ys);
  let y1 = yMax ?? Math.max(...ys);
  if (y0 === y1) y1 = y0 + 1;
  if (yMax === undefined) {
    // Round the top up to a whole step, so the highest curve never touches the frame.
    const step = niceStep(y1 - y0, 4);
    y1 = Math.ceil(y1 / step - 1e-9) * step;
  }
  const sx = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => margin.top + plotH - ((y - y0) / (y1 - y0)) * plotH;

  const axes = svg("g", { class: "chart-axes" });
  for (const t of ticks(y0, y1, 4)) {
    axes.append(svg("line", { x1: margin.left, x2: margin.left + plotW, y1: sy(t), y2: sy(t), class: "chart-grid" }));
    axes.append(svg("text", { x: margin.left - 6, y: sy(t) + 4, "text-anchor": "end" }, label(t)));
  }
  const xTicks = ticks(x0, x1, Math.min(8, Math.ceil(x1 - x0))).filter((t) => Number.isInteger(t) || x1 - x0 < 4);
  for (const t of xTicks) {
    axes.append(svg("line", { x1: sx(t), x2: sx(t), y1: margin.top + plotH, y2: margin.top + plotH + 4, class: "chart-tick" }));
    axes.append(svg("text", { x: sx(t), y: margin.top + plotH + 16, "text-anchor": "middle" }, label(t)));
  }
  axes.append(svg("line", { x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH, y2: margin.top + plotH, class: "chart-axis" }));
  axes.append(svg("text", { x: margin.left + plotW / 2, y: height - 4, "text-anchor": "middle", class: "chart-xlabel" }, xLabel));
  root.append(axes);

  for (const s of clean) {
    const group = svg("g", { class: "chart-series", "data-series": s.name });
    const points = [...s.points].sort((a, b) => a[0] - b[0]);
    if (points.length > 1) {
      group.append(
        svg("polyline", {
          points: points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "),
          fill: "none",
          stroke: s.colour,
          "stroke-width": 2,
          ...(s.dashed ? { "stroke-dasharray": "5 4" } : {}),
        }),
      );
    }
    for (const [x, y] of points) {
      const dot = svg("circle", { cx: sx(x), cy: sy(y), r: 3.5, fill: s.colour });
      dot.append(svg("title", {}, `${s.name}, ${xLabel} ${x}: ${label(y)}`));
      group.append(dot);
    }
    root.append(group);
  }

  const legend = document.createElement("div");
  legend.className = "chart-legend";
  for (const s of clean) {
    const item = document.createElement("span");
    item.innerHTML = '<i aria-hidden="true"></i>';
    item.append(s.name);
    item.querySelector("i").style.background = s.colour;
    legend.append(item);
  }
  figure.append(legend);
  return figure;
}

/** The two charts of a training run: losses, and entity-level F1 / precision / recall. */
export function epochCharts(epochs, plannedEpochs) {
  const series = (field) => epochs.map((e) => [Number(e.epoch), e[field] ?? null]);
  return [
    lineChart({
      title: "Loss per epoch",
      xMax: plannedEpochs,
      series: [
        { name: "train loss", colour: "#3b6fd8", points: series("train_loss") },
        { name: "validation loss", colour: "#e0672b", points: series("val_loss") },
      ],
    }),
    lineChart({
      title: "Validation scores per epoch",
      xMax: plannedEpochs,
      yMin: 0,
      yMax: 1,
      series: [
        { name: "F1", colour: "#1a9b62", points: series("f1") },
        { name: "precision", colour: "#8e6bd8", points: series("precision"), dashed: true },
        { name: "recall", colour: "#d8a21b", points: series("recall"), dashed: true },
      ],
    }),
  ];
}
