// The Duplicates view: near-duplicate groups (GET /v1/duplicates) page by page, to review; a member opens its
// neighbours in the search view.
"use strict";

const dup = { offset: 0, threshold: null, loaded: false };
const DUP_PAGE = 20;

async function loadDuplicates(reset) {
  const status = $("duplicates-status");
  const list = $("duplicates-groups");
  const more = $("duplicates-more");
  if (reset) {
    dup.offset = 0;
    list.replaceChildren();
  }
  const params = new URLSearchParams({ offset: String(dup.offset), limit: String(DUP_PAGE) });
  const value = $("duplicates-threshold").value.trim();
  if (value) params.set("threshold", value);
  status.textContent = "Finding near-duplicates…";
  more.hidden = true;
  try {
    const page = await api(`/v1/duplicates?${params}`);
    dup.loaded = true;
    if (!value) $("duplicates-threshold").value = String(page.threshold);
    status.textContent = page.total_groups
      ? `${page.total_groups.toLocaleString()} groups holding ${page.grouped_images.toLocaleString()} of ` +
        `${page.images.toLocaleString()} images at cosine ≥ ${page.threshold}` +
        ` · showing ${Math.min(page.offset + page.groups.length, page.total_groups)}`
      : `No near-duplicates among ${page.images.toLocaleString()} images at cosine ≥ ${page.threshold}.`;
    page.groups.forEach((group, i) => list.appendChild(renderGroup(group, page.offset + i + 1)));
    dup.offset = page.next_offset ?? dup.offset + page.groups.length;
    more.hidden = page.next_offset === null;
  } catch (err) {
    status.textContent = err.message;
  }
}

function renderGroup(group, number) {
  const li = document.createElement("li");
  li.className = "duplicate-group";
  const heading = document.createElement("h3");
  heading.textContent = `Group ${number} · ${group.size} images`;
  const row = document.createElement("ul");
  row.className = "grid";
  row.setAttribute("aria-label", `Group ${number}`);
  for (const m of group.members) {
    const item = document.createElement("li");
    const labels = m.labels.map(named).join(", ") || "unlabelled";
    const how = m.id === group.representative ? "representative" : m.identical ? "identical" : `cosine ${m.score.toFixed(4)}`;
    const button = resultTile(m, labels, `Image #${m.id}, ${labels}, ${how}. Show its neighbours.`, `#${m.id} · ${how}`);
    item.appendChild(button);
    row.appendChild(item);
  }
  li.append(heading, row);
  return li;
}

$("duplicates-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadDuplicates(true);
});
$("duplicates-more").addEventListener("click", () => loadDuplicates(false));
VIEW_OPENED.duplicates = () => {
  if (!dup.loaded) loadDuplicates(true);
};
