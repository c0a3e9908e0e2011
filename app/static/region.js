// msir web UI: region query. "Search a region", then drag a box on the query image: the box is cut out of the
// image at its full resolution in a canvas (in the browser; nothing but the crop is sent) and becomes the query.
"use strict";

(() => {
  const button = document.getElementById("region-button");
  const frame = document.getElementById("preview-frame");
  const preview = document.getElementById("preview");
  const MIN_PX = 4; // a smaller drag is a click, not a box
  let box = null; // the rubber band element while selecting
  let start = null;
  let swallowClick = false; // the click that ends a drag must not reach the drop zone either

  // The button is usable whenever a query image is shown.
  new MutationObserver(() => {
    button.disabled = preview.hidden || !preview.getAttribute("src");
  }).observe(preview, { attributes: true, attributeFilter: ["hidden", "src"] });

  function within(event) {
    const r = preview.getBoundingClientRect();
    return {
      x: Math.max(0, Math.min(r.width, event.clientX - r.left)),
      y: Math.max(0, Math.min(r.height, event.clientY - r.top)),
    };
  }

  function stop() {
    frame.classList.remove("selecting");
    if (box) box.remove();
    box = null;
    start = null;
    button.setAttribute("aria-pressed", "false");
  }

  button.addEventListener("click", () => {
    if (frame.classList.contains("selecting")) return stop();
    frame.classList.add("selecting");
    button.setAttribute("aria-pressed", "true");
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && frame.classList.contains("selecting")) stop();
  });

  // While selecting, the drop zone must not open the file picker.
  frame.addEventListener("click", (event) => {
    if (frame.classList.contains("selecting") || swallowClick) event.stopPropagation();
    swallowClick = false;
  });
  frame.addEventListener("pointerdown", (event) => {
    if (!frame.classList.contains("selecting")) return;
    event.preventDefault();
    event.stopPropagation();
    start = within(event);
    box = document.createElement("div");
    box.className = "region-box";
    box.id = "region-box";
    frame.appendChild(box);
    frame.setPointerCapture(event.pointerId);
  });
  frame.addEventListener("pointermove", (event) => {
    if (!start || !box) return;
    const p = within(event);
    const offset = preview.getBoundingClientRect();
    const host = frame.getBoundingClientRect();
    Object.assign(box.style, {
      left: `${offset.left - host.left + Math.min(start.x, p.x)}px`,
      top: `${offset.top - host.top + Math.min(start.y, p.y)}px`,
      width: `${Math.abs(p.x - start.x)}px`,
      height: `${Math.abs(p.y - start.y)}px`,
    });
  });
  frame.addEventListener("pointerup", (event) => {
    if (!start) return;
    event.stopPropagation();
    swallowClick = true;
    const p = within(event);
    const a = start;
    stop();
    if (Math.abs(p.x - a.x) < MIN_PX || Math.abs(p.y - a.y) < MIN_PX) return;
    // Displayed pixels -> the image's own pixels (the preview may be scaled; object-fit is contain).
    const r = preview.getBoundingClientRect();
    const s = Math.min(r.width / preview.naturalWidth, r.height / preview.naturalHeight);
    const dx = (r.width - preview.naturalWidth * s) / 2;
    const dy = (r.height - preview.naturalHeight * s) / 2;
    const clamp = (v, hi) => Math.max(0, Math.min(hi, Math.round(v)));
    const x0 = clamp((Math.min(a.x, p.x) - dx) / s, preview.naturalWidth);
    const y0 = clamp((Math.min(a.y, p.y) - dy) / s, preview.naturalHeight);
    const x1 = clamp((Math.max(a.x, p.x) - dx) / s, preview.naturalWidth);
    const y1 = clamp((Math.max(a.y, p.y) - dy) / s, preview.naturalHeight);
    if (x1 - x0 < 1 || y1 - y0 < 1) return;
    const canvas = document.createElement("canvas");
    canvas.width = x1 - x0;
    canvas.height = y1 - y0;
    canvas.getContext("2d").drawImage(preview, x0, y0, x1 - x0, y1 - y0, 0, 0, x1 - x0, y1 - y0);
    canvas.toBlob((blob) => {
      if (!blob) return;
      const name = `region-${x0}-${y0}-${x1}-${y1}.png`;
      window.msirUi.chooseFile(new File([blob], name, { type: "image/png" }));
    }, "image/png");
  });
})();
