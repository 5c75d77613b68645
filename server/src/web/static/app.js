// ml-dash serve: the pages' only script (served from the binary; the CSP allows no other).
// Hover values on the SVG charts, drag to zoom (a new page with xmin/xmax), and selects that
// submit their form.
"use strict";

function chartInfo(svg) {
  const d = svg.dataset;
  return {
    x0: +d.x0, x1: +d.x1, y0: +d.y0, y1: +d.y1,
    left: +d.left, right: +d.right, top: +d.top, bottom: +d.bottom,
  };
}

function toSvgX(svg, clientX) {
  const r = svg.getBoundingClientRect();
  return (clientX - r.left) * (svg.viewBox.baseVal.width / r.width);
}

function valueAt(info, sx) {
  return info.x0 + (sx - info.left) / (info.right - info.left) * (info.x1 - info.x0);
}

function fmt(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e5 || a < 1e-3 ? v.toExponential(3) : +v.toPrecision(5) + "";
}

function setupChart(svg) {
  const info = chartInfo(svg);
  const hover = svg.parentElement.querySelector(".hover");
  const ns = "http://www.w3.org/2000/svg";
  const cursor = document.createElementNS(ns, "line");
  cursor.setAttribute("class", "cursor");
  cursor.setAttribute("y1", info.top);
  cursor.setAttribute("y2", info.bottom);
  cursor.style.display = "none";
  svg.appendChild(cursor);
  const zoom = document.createElementNS(ns, "rect");
  zoom.setAttribute("class", "zoom");
  zoom.setAttribute("y", info.top);
  zoom.setAttribute("height", info.bottom - info.top);
  zoom.style.display = "none";
  svg.appendChild(zoom);
  const lines = Array.from(svg.querySelectorAll("polyline.series")).map((p) => ({
    label: p.dataset.label,
    pts: p.getAttribute("points").split(" ").filter(Boolean).map((s) => s.split(",").map(Number)),
  }));
  let dragFrom = null;
  svg.addEventListener("mousemove", (ev) => {
    const sx = toSvgX(svg, ev.clientX);
    if (sx < info.left || sx > info.right) return;
    cursor.setAttribute("x1", sx);
    cursor.setAttribute("x2", sx);
    cursor.style.display = "";
    const parts = [info.x1 > info.x0 ? "x " + fmt(valueAt(info, sx)) : ""];
    for (const l of lines) {
      let best = null;
      for (const p of l.pts) if (best === null || Math.abs(p[0] - sx) < Math.abs(best[0] - sx)) best = p;
      if (best) {
        const y = info.y0 + (info.bottom - best[1]) / (info.bottom - info.top) * (info.y1 - info.y0);
        parts.push(l.label + " " + fmt(y));
      }
    }
    if (hover) hover.textContent = parts.join("  ");
    if (dragFrom !== null) {
      zoom.setAttribute("x", Math.min(dragFrom, sx));
      zoom.setAttribute("width", Math.abs(sx - dragFrom));
      zoom.style.display = "";
    }
  });
  svg.addEventListener("mouseleave", () => { cursor.style.display = "none"; });
  svg.addEventListener("mousedown", (ev) => { dragFrom = toSvgX(svg, ev.clientX); ev.preventDefault(); });
  window.addEventListener("mouseup", (ev) => {
    if (dragFrom === null) return;
    const to = toSvgX(svg, ev.clientX);
    const a = Math.min(dragFrom, to), b = Math.max(dragFrom, to);
    dragFrom = null;
    zoom.style.display = "none";
    if (b - a < 4) return;
    const u = new URL(window.location.href);
    u.searchParams.set("xmin", valueAt(info, a));
    u.searchParams.set("xmax", valueAt(info, b));
    window.location.assign(u.toString());
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("svg.chart").forEach(setupChart);
  document.querySelectorAll("select.autosubmit").forEach((s) =>
    s.addEventListener("change", () => s.form.submit()));
});
