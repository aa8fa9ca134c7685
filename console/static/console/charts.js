// Small charts as inline SVG, drawn without a library: grouped bars (one group per
// category, one bar per series) and a line. Every chart is an <svg role="img"> whose
// aria-label says the numbers, followed by a table with the same numbers (the text
// alternative that screen readers and keyboard users can read cell by cell).

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#0b6bcb", "#c0262d", "#1a7f37", "#9a6700", "#6f42c1", "#5b6876"];

function el(name, attributes = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(name, attributes = {}, text) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A round maximum for the axis (1, 2, 5 × 10^n) at or above `value`. */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/** An axis label: at most two significant digits (0.25, 1.5, 20). */
const tick = (value) => String(Number(value.toPrecision(2)));

function shown(value, format) {
  return value === null || value === undefined ? "—" : format(value);
}

function table({ caption, categories, series, format, categoryHeading, collapsed = false }) {
  const wrap = html(collapsed ? "details" : "div", { class: "ov-chart-table" });
  if (collapsed) wrap.append(html("summary", {}, caption));
  const tableEl = html("table");
  tableEl.append(html("caption", {}, caption));
  const head = html("tr");
  head.append(html("th", { scope: "col" }, categoryHeading));
  for (const s of series) head.append(html("th", { scope: "col" }, s.label));
  const thead = html("thead");
  thead.append(head);
  const tbody = html("tbody");
  categories.forEach((category, i) => {
    const row = html("tr");
    row.append(html("th", { scope: "row" }, category));
    for (const s of series) {
      row.append(html("td", { "data-series": s.key }, shown(s.values[i], format)));
    }
    tbody.append(row);
  });
  tableEl.append(thead, tbody);
  wrap.append(tableEl);
  return wrap;
}

/** About how wide `text` is at 12px: CJK characters are twice as wide as Latin ones. */
function textWidth(text) {
  let width = 0;
  for (const ch of text) width += ch.codePointAt(0) > 0x2e80 ? 12 : 6.5;
  return width;
}

/** The series' colours and names on one or more lines; answers the height used. */
function legend(svg, series, width) {
  let x = 8;
  let y = 6;
  series.forEach((s, i) => {
    const w = 14 + textWidth(s.label) + 14;
    if (x > 8 && x + w > width - 8) {
      x = 8;
      y += 16;
    }
    svg.append(el("rect", { x, y, width: 10, height: 10, fill: PALETTE[i % PALETTE.length] }));
    svg.append(el("text", { x: x + 14, y: y + 9, class: "ov-chart-legend" }, s.label));
    x += w;
  });
  return y + 16;
}

/**
 * Grouped bars. `categories`: labels (e.g. hospitals); `series`: [{key, label, values}]
 * with one value per category (null: no data). `format` turns a number into text.
 */
export function barChart(
  container,
  { title, categories, series, format = String, categoryHeading, tableCaption, empty },
) {
  container.replaceChildren();
  const values = series.flatMap((s) => s.values).filter((v) => typeof v === "number");
  const summary = categories
    .map((c, i) => `${c}: ${series.map((s) => `${s.label} ${shown(s.values[i], format)}`).join(", ")}`)
    .join("; ");
  const width = 520;
  const rowHeight = 18 * series.length + 16;
  const left = 150;
  const right = 70;
  const svg = el("svg", {
    width: "100%",
    role: "img",
    "aria-label": `${title}. ${categories.length ? summary : empty}`,
    class: "ov-svg",
  });
  const top = legend(svg, series, width) + 8;
  const height = top + Math.max(categories.length, 1) * rowHeight + 22;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const max = niceMax(Math.max(0, ...values));
  const plot = width - left - right;
  // Axis with three ticks.
  for (const share of [0, 0.5, 1]) {
    const x = left + plot * share;
    svg.append(el("line", { x1: x, y1: top - 4, x2: x, y2: height - 18, class: "ov-grid" }));
    svg.append(el("text", { x, y: height - 4, "text-anchor": "middle", class: "ov-tick" }, tick(max * share)));
  }
  if (!categories.length) {
    svg.append(el("text", { x: left + plot / 2, y: top + 20, "text-anchor": "middle", class: "ov-tick" }, empty));
  }
  categories.forEach((category, i) => {
    const y0 = top + i * rowHeight;
    const name = category.length > 14 ? `${category.slice(0, 13)}…` : category;
    svg.append(el("text", { x: left - 6, y: y0 + rowHeight / 2, "text-anchor": "end", class: "ov-category" }, name));
    series.forEach((s, j) => {
      const value = s.values[i];
      const y = y0 + 6 + j * 18;
      const w = typeof value === "number" ? Math.max((value / max) * plot, value > 0 ? 2 : 0) : 0;
      const bar = el("rect", {
        x: left,
        y,
        width: w,
        height: 14,
        fill: PALETTE[j % PALETTE.length],
        "data-series": s.key,
        "data-value": value ?? "",
      });
      svg.append(bar);
      svg.append(el("text", { x: left + w + 4, y: y + 11, class: "ov-value" }, shown(value, format)));
    });
  });
  container.append(svg, table({ caption: tableCaption, categories, series, format, categoryHeading }));
}

/** A line over points in order ({label, value}); the table lists the points. */
export function lineChart(
  container,
  { title, points, format = String, seriesLabel, categoryHeading, tableCaption, empty, last = 20 },
) {
  container.replaceChildren();
  const recent = points.slice(-last);
  const width = 520;
  const height = 150;
  const left = 44;
  const top = 12;
  const bottom = 22;
  const values = recent.map((p) => p.value).filter((v) => typeof v === "number");
  const max = niceMax(Math.max(0, ...values));
  const summary = recent.map((p) => `${p.label}: ${shown(p.value, format)}`).join("; ");
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width: "100%",
    role: "img",
    "aria-label": `${title}. ${recent.length ? summary : empty}`,
    class: "ov-svg",
  });
  const plotH = height - top - bottom;
  const plotW = width - left - 10;
  for (const share of [0, 0.5, 1]) {
    const y = top + plotH * (1 - share);
    svg.append(el("line", { x1: left, y1: y, x2: width - 10, y2: y, class: "ov-grid" }));
    svg.append(el("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "ov-tick" }, tick(max * share)));
  }
  if (!recent.length) {
    svg.append(el("text", { x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle", class: "ov-tick" }, empty));
  }
  const step = recent.length > 1 ? plotW / (recent.length - 1) : 0;
  const xy = recent.map((p, i) => [
    left + (recent.length > 1 ? i * step : plotW / 2),
    top + plotH * (1 - (typeof p.value === "number" ? p.value / max : 0)),
  ]);
  if (xy.length > 1) {
    svg.append(el("polyline", { points: xy.map(([x, y]) => `${x},${y}`).join(" "), class: "ov-line", fill: "none", stroke: PALETTE[0] }));
  }
  xy.forEach(([x, y]) => svg.append(el("circle", { cx: x, cy: y, r: 3, fill: PALETTE[0] })));
  const series = [{ key: "value", label: seriesLabel, values: recent.map((p) => p.value) }];
  container.append(
    svg,
    table({
      caption: tableCaption,
      categories: recent.map((p) => p.label),
      series,
      format,
      categoryHeading,
      collapsed: true,
    }),
  );
}
