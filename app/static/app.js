// msir web UI: plain JavaScript, no build step. Talks to the /v1 API of the same server.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  info: $("collection-info"),
  form: $("search-form"),
  dropzone: $("dropzone"),
  file: $("file-input"),
  preview: $("preview"),
  k: $("k-input"),
  label: $("label-filter"),
  excludeDup: $("exclude-duplicates"),
  minScore: $("min-score"),
  button: $("search-button"),
  error: $("error"),
  results: $("results"),
  status: $("status"),
  predictions: $("predictions"),
  predictionsHeading: $("predictions-heading"),
  predictionsNote: $("predictions-note"),
  predictionList: $("prediction-list"),
  knn: $("knn"),
  knnHeading: $("knn-heading"),
  knnList: $("knn-list"),
  grid: $("grid"),
  timings: $("timings"),
};

let currentFile = null;
let currentQueryId = null; // the stored image searched from (neighbours), else null
let previewUrl = null;
let maxUploadBytes = null;

// Error codes of the API -> plain words. The server's own message is kept as a detail.
const FRIENDLY = {
  payload_too_large: () =>
    `That file is too big${maxUploadBytes ? ` (the limit is ${formatBytes(maxUploadBytes)})` : ""}.`,
  image_too_large: () => "That image has too many pixels for this server. Try a smaller image.",
  unsupported_image: () => "That file is not an image format we can read. Try a JPEG, PNG, GIF or WebP file.",
  invalid_image: () => "That image could not be read: the file is empty, damaged or cut short.",
  validation_error: () => "Some of the search settings are not valid.",
  unknown_label: () => "That class is not in this collection.",
  image_not_found: () => "That image is no longer in the collection.",
  missing_api_key: () => "This server needs an API key for searching.",
  invalid_api_key: () => "The API key was not accepted.",
  database_unavailable: () => "The image database is not reachable right now. Please try again in a moment.",
  not_ready: () => "The server is still starting. Please try again in a moment.",
};

function formatBytes(n) {
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(n % (1024 * 1024) ? 1 : 0)} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} kB`;
  return `${n} bytes`;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(0, "network", "The server could not be reached. Check your connection and try again.");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    const error = (body && body.error) || {};
    const code = error.code || `http_${response.status}`;
    const friendly = FRIENDLY[code] ? FRIENDLY[code]() : "Something went wrong.";
    const detail = error.message ? ` (${error.message})` : "";
    throw new ApiError(response.status, code, friendly + detail);
  }
  return body;
}

function showError(message) {
  els.error.textContent = message;
  els.error.hidden = false;
}

function clearError() {
  els.error.hidden = true;
  els.error.textContent = "";
}

function clearResults(message) {
  els.grid.replaceChildren();
  els.predictions.hidden = true;
  els.knn.hidden = true;
  els.timings.textContent = "";
  els.status.textContent = message;
}

function setBusy(busy, message) {
  els.results.setAttribute("aria-busy", busy ? "true" : "false");
  els.button.disabled = busy || !currentFile;
  if (message) els.status.textContent = message;
}

// Full class names (from the checkpoint) where labels are codes: "melanoma (MEL)".
let descriptions = {};
function named(label) {
  const full = descriptions[label];
  return full ? `${full} (${label})` : label;
}

// When the checkpoint's classes are not the collection's labels (a model trained on other data), its head names the
// model's own classes: they are shown as such, below the neighbours' vote over the collection's labels.
function showScope(scope, modelName, note) {
  const own = scope === "model";
  els.predictionsHeading.textContent = own ? `Model classes (${modelName}), not this collection's` : "Model prediction";
  els.knnHeading.textContent = own ? "Neighbours vote (this collection's labels)" : "Neighbours vote";
  els.predictionsNote.textContent = own && note ? note : "";
  els.predictionsNote.hidden = !(own && note);
  const wrap = els.knn.parentElement;
  if (own) wrap.insertBefore(els.knn, els.predictions);
  else wrap.insertBefore(els.predictions, els.knn);
}

let modelName = "model";
let scopeNote = null;

async function loadCollection() {
  try {
    const info = await api("/v1/collection");
    modelName = info.trained_on || info.model;
    scopeNote = info.predictions_note || null;
    showScope(info.predictions_scope, modelName, scopeNote);
    descriptions = info.class_descriptions || {};
    maxUploadBytes = info.max_upload_bytes;
    els.info.textContent =
      `${info.size.toLocaleString()} images · model ${info.model} · ${info.label_names.length} labels` +
      ` · ${info.index_type} index`;
    els.k.max = String(info.max_k);
    els.k.value = String(Math.min(Number(els.k.value) || info.default_k, info.max_k));
    // The collection's own labels (what its images carry), not the checkpoint's classes: filters accept these.
    for (const name of info.label_names) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = named(name);
      els.label.appendChild(option);
    }
  } catch (err) {
    els.info.textContent = "Collection information is unavailable.";
    showError(err.message);
  }
}

function chooseFile(file) {
  if (!file) return;
  clearError();
  if (maxUploadBytes && file.size > maxUploadBytes) {
    showError(FRIENDLY.payload_too_large());
    return;
  }
  currentFile = file;
  currentQueryId = null;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  els.preview.src = previewUrl;
  els.preview.alt = `Your image: ${file.name}`;
  els.preview.classList.remove("small");
  els.preview.hidden = false;
  els.button.disabled = false;
  runSearch();
}

// Optional minimum score (-1..1): results below it are dropped by the server.
function readMinScore() {
  const raw = els.minScore.value.trim();
  if (!raw) return null;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < -1 || value > 1) {
    throw new ApiError(422, "bad_min_score", "Minimum score must be a number from -1 to 1.");
  }
  return value;
}

function readK() {
  const k = Number.parseInt(els.k.value, 10);
  const max = Number.parseInt(els.k.max, 10) || 100;
  if (!Number.isFinite(k) || k < 1 || k > max) {
    throw new ApiError(422, "bad_k", `Number of results must be between 1 and ${max}.`);
  }
  return k;
}

async function runSearch() {
  if (!currentFile) return;
  clearError();
  let k;
  let minScore;
  try {
    k = readK();
    minScore = readMinScore();
  } catch (err) {
    showError(err.message);
    return;
  }
  const data = new FormData();
  if (minScore !== null) data.append("min_score", String(minScore));
  data.append("image", currentFile, currentFile.name);
  data.append("k", String(k));
  if (els.label.value) data.append("label", els.label.value);
  data.append("exclude_duplicates", els.excludeDup.checked ? "true" : "false");
  setBusy(true, "Searching…");
  try {
    const result = await api("/v1/search", { method: "POST", body: data });
    startFeedback({ file: currentFile });
    render(result, `${result.neighbours.length} similar images to ${currentFile.name}`);
  } catch (err) {
    showError(err.message);
    clearResults("The search did not complete.");
  } finally {
    setBusy(false);
  }
}

async function searchById(id, labels) {
  showView("search");
  clearError();
  let k;
  let minScore;
  try {
    k = readK();
    minScore = readMinScore();
  } catch (err) {
    showError(err.message);
    return;
  }
  const params = new URLSearchParams({ k: String(k) });
  if (minScore !== null) params.append("min_score", String(minScore));
  if (els.label.value) params.append("label", els.label.value);
  setBusy(true, `Finding images similar to #${id}…`);
  try {
    const result = await api(`/v1/images/${encodeURIComponent(id)}/neighbours?${params}`);
    currentFile = null;
    currentQueryId = id;
    els.preview.src = `/v1/images/${id}/thumbnail`;
    els.preview.alt = `Stored image #${id}` + (labels ? `, labelled ${labels}` : "");
    els.preview.classList.add("small");
    els.preview.hidden = false;
    startFeedback({ id });
    render(result, `${result.neighbours.length} images similar to stored image #${id}`);
    els.results.focus();
  } catch (err) {
    showError(err.message);
    clearResults("The search did not complete.");
  } finally {
    setBusy(false);
  }
}

function renderBars(list, items) {
  list.replaceChildren();
  for (const item of items.slice(0, 5)) {
    const pct = Math.round(item.probability * 1000) / 10;
    const li = document.createElement("li");
    li.className = "bar";
    li.innerHTML =
      '<span class="bar-label"></span>' +
      '<span class="bar-track" role="presentation"><span class="bar-fill"></span></span>' +
      '<span class="bar-value"></span>';
    li.querySelector(".bar-label").textContent = named(item.label);
    li.querySelector(".bar-label").title = named(item.label);
    li.querySelector(".bar-fill").style.width = `${Math.max(0, Math.min(100, pct))}%`;
    li.querySelector(".bar-value").textContent = `${pct}%`;
    li.setAttribute("aria-label", `${named(item.label)}: ${pct} percent`);
    list.appendChild(li);
  }
}

// One stored image as a clickable tile (thumbnail, labels, caption) that searches from it: the results grid and
// the duplicates page show their images alike.
function resultTile(image, labels, ariaLabel, caption) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "result";
  button.dataset.id = String(image.id);
  button.setAttribute("aria-label", ariaLabel);
  const img = document.createElement("img");
  img.src = image.thumbnail_url;
  img.alt = `Image #${image.id} (${labels})`;
  img.loading = "lazy";
  img.width = 140;
  img.height = 140;
  const labelEl = document.createElement("span");
  labelEl.className = "labels";
  labelEl.textContent = labels;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = caption;
  button.append(img, labelEl, score);
  button.addEventListener("click", () => searchById(image.id, labels));
  return button;
}

function render(result, heading) {
  els.status.textContent = result.neighbours.length ? heading : "No similar images found with these settings.";
  if (result.predictions_scope) showScope(result.predictions_scope, modelName, scopeNote);
  if (result.predictions && result.predictions.length) {
    renderBars(els.predictionList, result.predictions);
    els.predictions.hidden = false;
  } else {
    els.predictions.hidden = true;
  }
  if (result.knn_prediction && result.knn_prediction.distribution.length) {
    renderBars(els.knnList, result.knn_prediction.distribution);
    els.knn.hidden = false;
  } else {
    els.knn.hidden = true;
  }
  els.grid.replaceChildren();
  result.neighbours.forEach((n, i) => {
    const li = document.createElement("li");
    const labels = n.labels.map(named).join(", ") || "unlabelled";
    let caption = `#${n.id} · score ${n.score.toFixed(3)}`;
    if (n.same_class_probability !== null && n.same_class_probability !== undefined) {
      caption += ` · same class ${Math.round(n.same_class_probability * 100)}%`;
    }
    const button = resultTile(
      n,
      labels,
      `Result ${i + 1}: image #${n.id}, ${labels}, similarity ${n.score.toFixed(3)}. Find images similar to this one.`,
      caption,
    );
    li.appendChild(button);
    li.appendChild(feedbackButtons(n.id));
    els.grid.appendChild(li);
  });
  const t = result.timings || {};
  const stages = [
    ["decode", "decode"],
    ["preprocess", "preprocess"],
    ["embed", "model"],
    ["search", "search"],
    ["database", "database"],
    ["total", "total"],
  ];
  els.timings.textContent = stages
    .filter(([key]) => t[key] > 0)
    .map(([key, name]) => `${name} ${t[key].toFixed(1)} ms`)
    .join(" · ");
  // explain.js (heat-maps) listens: the results and what they were searched from.
  document.dispatchEvent(
    new CustomEvent("msir:results", { detail: { result, file: currentFile, queryId: currentQueryId } }),
  );
}

function setUpDropzone() {
  const zone = els.dropzone;
  zone.addEventListener("click", () => els.file.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      els.file.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragover");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.remove("dragover");
    });
  }
  zone.addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
  els.file.addEventListener("change", () => chooseFile(els.file.files[0]));
}

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  runSearch();
});
els.label.addEventListener("change", () => currentFile && runSearch());
// A file the browser cannot display (the API will say why) must not leave a broken image behind.
els.preview.addEventListener("error", () => {
  els.preview.hidden = true;
});
// Views (search, duplicates, map) are sections of this one page, chosen by the URL's #fragment.
const VIEWS = { search: [els.form.closest("section"), els.results], duplicates: [$("duplicates-view")], map: [$("map-view")] };
const VIEW_OPENED = {};
function showView(name) {
  const view = VIEWS[name] ? name : "search";
  for (const [key, sections] of Object.entries(VIEWS)) {
    for (const section of sections) section.hidden = key !== view;
    const tab = $(`tab-${key}`);
    if (key === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  document.querySelector("main").classList.toggle("single", view !== "search");
  if (location.hash !== `#${view}` && (location.hash || view !== "search")) history.replaceState(null, "", `#${view}`);
  if (VIEW_OPENED[view]) VIEW_OPENED[view]();
}
window.addEventListener("hashchange", () => showView(location.hash.slice(1)));
// After every deferred script (duplicates.js and map.js register their views' openers).
document.addEventListener("DOMContentLoaded", () => showView(location.hash.slice(1)));

setUpDropzone();
loadCollection();
// For region.js: a cropped region becomes the query like any chosen file.
window.msirUi = { chooseFile };
