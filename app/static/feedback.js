// Relevance feedback: "more like this" / "less like this" on each result re-run the search through
// POST /v1/search/feedback, with the original query (upload or stored image) as the first positive example.
"use strict";

const feedback = { base: null, more: new Set(), less: new Set() };

// A fresh search (upload or click-through) starts a new feedback session from its query.
function startFeedback(base) {
  feedback.base = base;
  feedback.more.clear();
  feedback.less.clear();
  showSteering();
}

function showSteering() {
  const box = $("steering");
  const n = feedback.more.size + feedback.less.size;
  box.hidden = n === 0;
  $("steering-text").textContent = n
    ? `Steered by ${feedback.more.size} “more like this” and ${feedback.less.size} “less like this”.`
    : "";
}

function feedbackButtons(id) {
  const wrap = document.createElement("div");
  wrap.className = "feedback";
  for (const [kind, text, label] of [
    ["more", "+ More like this", "More like this"],
    ["less", "− Less like this", "Less like this"],
  ]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `feedback-${kind} secondary`;
    button.textContent = text;
    button.setAttribute("aria-label", `${label}: image #${id}`);
    button.setAttribute("aria-pressed", String(feedback[kind].has(id)));
    button.addEventListener("click", () => steer(id, kind));
    wrap.appendChild(button);
  }
  return wrap;
}

async function steer(id, kind) {
  const other = kind === "more" ? "less" : "more";
  feedback[other].delete(id);
  if (feedback[kind].has(id)) feedback[kind].delete(id);
  else feedback[kind].add(id);
  showSteering();
  if (!feedback.more.size && !feedback.less.size) {
    await rerunBase();
    return;
  }
  await runFeedback();
}

async function rerunBase() {
  const base = feedback.base;
  if (!base) return;
  if (base.file) await runSearch();
  else await searchById(base.id);
}

async function runFeedback() {
  clearError();
  let k;
  try {
    k = readK();
  } catch (err) {
    showError(err.message);
    return;
  }
  const data = new FormData();
  data.append("k", String(k));
  if (els.label.value) data.append("label", els.label.value);
  const base = feedback.base || {};
  if (base.file) data.append("positive", base.file, base.file.name);
  if (base.id !== undefined) data.append("positive_id", String(base.id));
  for (const id of feedback.more) if (id !== base.id) data.append("positive_id", String(id));
  for (const id of feedback.less) data.append("negative_id", String(id));
  setBusy(true, "Searching with your feedback…");
  try {
    const result = await api("/v1/search/feedback", { method: "POST", body: data });
    render(result, `${result.neighbours.length} images steered by your feedback`);
  } catch (err) {
    showError(err.message);
    clearResults("The search did not complete.");
  } finally {
    setBusy(false);
  }
}

$("steering-clear").addEventListener("click", async () => {
  const base = feedback.base;
  startFeedback(base);
  await rerunBase();
});
