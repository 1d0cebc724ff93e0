// Seller page: calls /api/v1/predict and /api/v1/search; no framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function callApi(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const detail = body && (body.detail || body.title);
    throw new Error(detail || `request failed (HTTP ${response.status})`);
  }
  return body;
}

function setStatus(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("error", isError);
}

function pct(x) { return `${Math.round(x * 100)} %`; }

function productCard(item) {
  const thumb = el("div", { class: "thumb" });
  if (item.image_url) {
    thumb.append(el("img", { src: `${item.image_url.split("?")[0]}?size=192`, alt: item.name, loading: "lazy" }));
  } else {
    thumb.append(el("span", { class: "none", text: "no photo" }));
  }
  const meta = el("div", { class: "meta" },
    el("div", { class: "name", text: item.name, title: item.name }),
    el("div", { class: "cat", text: (item.category_path || [item.category]).slice(0, 2).join(" › ") }),
    el("div", { class: "score", text: `similarity ${item.score.toFixed(2)}` }));
  return el("li", { "data-id": item.id }, thumb, meta);
}

// ---- predict ---------------------------------------------------------------------------
const form = $("predict-form");
const imageInput = $("image");
const preview = $("preview");
const dropText = $("drop-text");
const clearButton = $("clear-image");
let droppedFile = null;

function currentFile() { return droppedFile || (imageInput.files && imageInput.files[0]) || null; }

function showPreview(file) {
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (!file) {
    preview.hidden = true; preview.removeAttribute("src"); dropText.hidden = false; clearButton.hidden = true;
    return;
  }
  preview.src = URL.createObjectURL(file);
  preview.alt = `Selected photo: ${file.name}`;
  preview.hidden = false; dropText.hidden = true; clearButton.hidden = false;
}

imageInput.addEventListener("change", () => { droppedFile = null; showPreview(currentFile()); });
clearButton.addEventListener("click", () => { droppedFile = null; imageInput.value = ""; showPreview(null); imageInput.focus(); });
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("dragging"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("dragging"); }));
drop.addEventListener("drop", (e) => {
  const file = e.dataTransfer.files && e.dataTransfer.files[0];
  if (file) { droppedFile = file; showPreview(file); }
});

function renderPrediction(p) {
  $("result-category").textContent = p.category || "—";
  $("result-path").textContent = (p.category_path || []).join(" › ");
  const badge = $("result-decision");
  const auto = p.decision === "auto";
  badge.textContent = auto ? "Auto-approved" : "Needs human review";
  badge.className = `badge ${auto ? "auto" : "review"}`;
  $("result-meter").value = p.confidence;
  $("result-confidence").textContent = pct(p.confidence);
  const kind = p.kind && p.kind.description ? ` Listing read as: ${p.kind.description}.` : "";
  const reasons = (p.reasons || []).map((r) => r.charAt(0).toUpperCase() + r.slice(1)).join(". ");
  $("result-explain").textContent = (auto
    ? "Confident enough to file automatically."
    : `A reviewer will check this category. ${reasons || "Not confident enough"}.`) + kind;
  const scores = $("result-scores");
  scores.replaceChildren();
  for (const [name, value] of Object.entries(p.scores)) {
    const bar = el("span", { class: "bar" }, el("span", { style: `width:${(value * 100).toFixed(1)}%` }));
    scores.append(el("li", {}, el("span", { text: name }), bar, el("span", { class: "num", text: pct(value) })));
  }
  const list = $("result-neighbors");
  list.replaceChildren(...p.neighbors.slice(0, 8).map(productCard));
  const t = p.timing_ms || {};
  $("result-timing").textContent = `answered in ${Math.round(t.total || 0)} ms (modalities: ${(p.modalities || []).join(" + ")})`;
  $("result").hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("predict-status");
  const data = new FormData();
  const file = currentFile();
  const title = $("title").value.trim();
  const description = $("description").value.trim();
  if (!file && !title && !description) {
    setStatus(status, "Add a photo or type a title first.", true);
    return;
  }
  if (file) data.append("image", file, file.name);
  data.append("title", title);
  data.append("description", description);
  const button = $("predict-button");
  button.disabled = true;
  setStatus(status, "Looking for similar products…");
  try {
    const prediction = await callApi("/api/v1/predict", { method: "POST", body: data });
    renderPrediction(prediction);
    setStatus(status, "");
    $("result-category").focus?.();
  } catch (err) {
    setStatus(status, err.message, true);
  } finally {
    button.disabled = false;
  }
});

// ---- search ----------------------------------------------------------------------------
$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("search-status");
  const text = $("search-text").value.trim();
  if (!text) { setStatus(status, "Type something to search for.", true); return; }
  const payload = { title: text, k: 12 };
  const category = $("search-category").value;
  if (category) payload.category = category;
  setStatus(status, "Searching…");
  try {
    const body = await callApi("/api/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
    });
    $("search-results").replaceChildren(...body.results.map(productCard));
    setStatus(status, `${body.results.length} products`);
  } catch (err) {
    setStatus(status, err.message, true);
  }
});

// ---- categories for the filter --------------------------------------------------------
(async () => {
  try {
    const body = await callApi("/api/v1/categories");
    const select = $("search-category");
    for (const c of body.categories) select.append(el("option", { value: c.name, text: `${c.name} (${c.count})` }));
    $("index-info").textContent = `${body.total} products indexed`;
  } catch (err) {
    $("index-info").textContent = `index not ready: ${err.message}`;
  }
})();
