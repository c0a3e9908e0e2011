// The Map view: every image (or a sample) placed by the first two principal axes of its embedding (GET /v1/map),
// coloured by label; choosing a point opens the image and its neighbours in the search view.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
// Distinct colours (Okabe–Ito, then Tableau) for up to 16 labels; more labels reuse them.
const PALETTE = [
  "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
  "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#76B7B2", "#EDC948", "#FF9DA7", "#9C755F",
];
let mapLoaded = false;

async function loadMap() {
  const status = $("map-status");
  const plot = $("map-plot");
  status.textContent = "Computing the map…";
  try {
    const map = await api("/v1/map");
    mapLoaded = true;
    const labels = [...new Set(map.points.map((p) => p.label ?? "unlabelled"))].sort();
    const colour = Object.fromEntries(labels.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
    plot.replaceChildren();
    for (const p of map.points) {
      const label = p.label ?? "unlabelled";
      const dot = document.createElementNS(SVG_NS, "circle");
      dot.setAttribute("cx", String(p.x));
      dot.setAttribute("cy", String(-p.y)); // SVG's y grows downwards
      dot.setAttribute("r", map.points.length > 2000 ? "0.008" : "0.016");
      dot.setAttribute("fill", colour[label]);
      dot.setAttribute("class", "map-point");
      dot.setAttribute("tabindex", "0");
      dot.setAttribute("role", "button");
      dot.setAttribute("aria-label", `Image #${p.id}, ${named(label)}`);
      dot.dataset.id = String(p.id);
      const title = document.createElementNS(SVG_NS, "title");
      title.textContent = `#${p.id} · ${named(label)}`;
      dot.appendChild(title);
      const open = () => searchById(p.id, named(label));
      dot.addEventListener("click", open);
      dot.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          open();
        }
      });
      plot.appendChild(dot);
    }
    const legend = $("map-legend");
    legend.replaceChildren();
    for (const name of labels) {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour[name];
      li.append(swatch, document.createTextNode(named(name)));
      legend.appendChild(li);
    }
    const variance = map.explained_variance.map((v) => `${(v * 100).toFixed(1)}%`).join(" + ");
    status.textContent =
      `${map.points.length.toLocaleString()} ${map.sampled ? `of ${map.total.toLocaleString()} images (random sample)` : "images"}` +
      ` · PCA, the two axes explain ${variance} of the variance · choose a point to see its neighbours`;
  } catch (err) {
    status.textContent = err.message;
  }
}

VIEW_OPENED.map = () => {
  if (!mapLoaded) loadMap();
};
