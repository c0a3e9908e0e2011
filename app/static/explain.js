// msir web UI: "Show why" heat-maps (POST /v1/explain) over the query and every result.
// Each result gets its own map; the query's map depends on the result, so the query shows the map against the
// result under the pointer or focus (the first result otherwise). Purple to yellow: regions that add to the
// similarity (yellow the most), blue: regions that take from it; one colour scale per pair.
"use strict";

(() => {
  const toggle = document.getElementById("explain-toggle");
  const grid = document.getElementById("grid");
  const frame = document.getElementById("preview-frame");
  const preview = document.getElementById("preview");
  const status = document.getElementById("status");
  let last = null; // the latest msir:results detail
  let explained = new Map(); // result id -> explanation
  let request = 0; // answers of an older request are dropped

  function draw(canvas, map, scale) {
    // The grid is drawn at its own size and stretched by CSS with smoothing: a bilinear overlay.
    canvas.width = map.cols;
    canvas.height = map.rows;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(map.cols, map.rows);
    map.values.forEach((row, r) =>
      row.forEach((v, c) => {
        const t = scale > 0 ? Math.max(-1, Math.min(1, v / scale)) : 0;
        const o = 4 * (r * map.cols + c);
        // Positive: dark purple -> bright yellow (visible on any photo); negative: blue, fading with size.
        const rgb = t >= 0 ? [40 + 215 * t, 230 * t, 90 * (1 - t)] : [0, 120, 255];
        image.data[o] = Math.round(rgb[0]);
        image.data[o + 1] = Math.round(rgb[1]);
        image.data[o + 2] = Math.round(rgb[2]);
        image.data[o + 3] = Math.round(255 * (t >= 0 ? 0.25 + 0.5 * t : 0.6 * -t));
      }),
    );
    ctx.putImageData(image, 0, 0);
  }

  function scaleOf(explanation) {
    const all = [...explanation.query.values.flat(), ...explanation.result.values.flat()];
    return Math.max(...all.map(Math.abs));
  }

  function overlay(parent, className, label) {
    let canvas = parent.querySelector(`canvas.${className}`);
    if (!canvas) {
      canvas = document.createElement("canvas");
      canvas.className = `heatmap ${className}`;
      canvas.setAttribute("role", "img");
      parent.appendChild(canvas);
    }
    canvas.setAttribute("aria-label", label);
    return canvas;
  }

  function showQuery(id) {
    const explanation = explained.get(id);
    if (!explanation || preview.hidden) return;
    const canvas = overlay(frame, "query-heatmap", `Heat-map of the query against result #${id}`);
    canvas.id = "query-heatmap";
    canvas.dataset.resultId = String(id);
    draw(canvas, explanation.query, scaleOf(explanation));
  }

  function clear() {
    explained = new Map();
    for (const canvas of document.querySelectorAll("canvas.heatmap")) canvas.remove();
  }

  async function explain() {
    clear();
    if (!toggle.checked || !last || !last.result.neighbours.length) return;
    const ids = last.result.neighbours.map((n) => n.id);
    let url = "/v1/explain";
    let options = { method: "POST" };
    if (last.file) {
      const data = new FormData();
      data.append("image", last.file, last.file.name);
      for (const id of ids) data.append("result_id", String(id));
      options.body = data;
    } else if (last.queryId !== null) {
      const params = new URLSearchParams(ids.map((id) => ["result_id", String(id)]));
      url = `/v1/images/${encodeURIComponent(last.queryId)}/explain?${params}`;
      options = {};
    } else return;
    const mine = ++request;
    let body;
    try {
      const response = await fetch(url, options);
      body = await response.json();
      if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    } catch (err) {
      if (mine === request) status.textContent = `Heat-maps are unavailable: ${err.message}`;
      return;
    }
    if (mine !== request || !toggle.checked) return;
    for (const e of body.explanations) explained.set(e.result_id, e);
    for (const button of grid.querySelectorAll(".result")) {
      const e = explained.get(Number(button.dataset.id));
      if (!e) continue;
      const holder = button.querySelector(".thumb") || wrap(button);
      const sum = e.result.values.flat().reduce((a, b) => a + b, 0);
      const what = body.exact ? `sums to the score ${sum.toFixed(3)}` : "Grad-CAM";
      draw(overlay(holder, "result-heatmap", `Heat-map of result #${e.result_id} (${what})`), e.result, scaleOf(e));
      button.addEventListener("mouseenter", () => showQuery(e.result_id));
      button.addEventListener("focus", () => showQuery(e.result_id));
    }
    showQuery(ids[0]);
  }

  function wrap(button) {
    // The thumbnail and its overlay share one positioned box.
    const img = button.querySelector("img");
    const holder = document.createElement("span");
    holder.className = "thumb";
    img.replaceWith(holder);
    holder.appendChild(img);
    return holder;
  }

  document.addEventListener("msir:results", (event) => {
    last = event.detail;
    explain();
  });
  toggle.addEventListener("change", explain);
})();
