// Seller page: calls /api/v1/predict and /api/v1/search; no framework, no build step.
// Every visible word comes from the page's dictionary (service/i18n/<lang>.json, embedded
// by the server in #page-data): nothing to translate here.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = JSON.parse($("page-data").textContent);
const numberFormat = new Intl.NumberFormat(PAGE.lang, { maximumFractionDigits: 1 });
const scoreFormat = new Intl.NumberFormat(PAGE.lang, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const percentFormat = new Intl.NumberFormat(PAGE.lang, { style: "percent", maximumFractionDigits: 0 });
// The server's limit is on the whole request: the photo, the text fields and the form's framing.
const FORM_FRAMING_BYTES = 4096;

function t(key, params = {}) {
  let text = PAGE.strings[key];
  if (text === undefined) throw new Error(`missing string ${key}`);
  for (const [name, value] of Object.entries(params)) text = text.replaceAll(`{${name}}`, String(value));
  return text;
}

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

// ---- errors in plain words -------------------------------------------------------------
// A failed request becomes one sentence of the page's language chosen by its HTTP status;
// the server's own detail (a sentence of its problem+json) is shown smaller, never raw JSON.
class Problem extends Error {
  constructor(message, detail = "") {
    super(message);
    this.detail = detail;
  }
}

function sentenceFor(status, context) {
  if (status === 404 && context === "search") return t("error_404_category");
  if (status === 413) return t("error_413", { mb: PAGE.maxUploadMb });
  if ([400, 404, 408, 415, 422, 429, 503].includes(status)) return t(`error_${status}`);
  if (status >= 500) return t("error_5xx");
  return t("error_other", { status });
}

function serverDetail(body) {
  const detail = body && typeof body.detail === "string" ? body.detail.trim() : "";
  return detail.length <= 300 ? detail : `${detail.slice(0, 297)}…`;
}

async function callApi(url, options, context) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new Problem(t("error_network"));
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Problem(sentenceFor(response.status, context), serverDetail(body));
  if (body === null) throw new Problem(t("error_other", { status: response.status }));
  return body;
}

function setStatus(node, text, isError = false, detail = "") {
  node.replaceChildren(text);
  if (detail) node.append(el("small", { class: "detail", text: t("error_detail", { detail }) }));
  node.classList.toggle("error", isError);
}

function showError(node, err) {
  const problem = err instanceof Problem ? err : new Problem(t("error_page"));
  setStatus(node, problem.message, true, problem.detail);
}

function pct(x) { return percentFormat.format(x); }
function megabytes(bytes) { return numberFormat.format(Math.max(bytes / 2 ** 20, 0.1)); }

function productCard(item) {
  const thumb = el("div", { class: "thumb" });
  if (item.image_url) {
    thumb.append(el("img", { src: `${item.image_url.split("?")[0]}?size=192`, alt: item.name, loading: "lazy" }));
  } else {
    thumb.append(el("span", { class: "none", text: t("no_photo") }));
  }
  const meta = el("div", { class: "meta" },
    el("div", { class: "name", text: item.name, title: item.name }),
    el("div", { class: "cat", text: (item.category_path || [item.category]).slice(0, 2).join(" › ") }),
    el("div", { class: "score", text: t("similarity", { score: scoreFormat.format(item.score) }) }));
  return el("li", { "data-id": item.id }, thumb, meta);
}

// ---- photo -----------------------------------------------------------------------------
const form = $("predict-form");
const imageInput = $("image");
const preview = $("preview");
const dropText = $("drop-text");
const clearButton = $("clear-image");
const predictStatus = $("predict-status");
let droppedFile = null;

function currentFile() { return droppedFile || (imageInput.files && imageInput.files[0]) || null; }

function showPreview(file) {
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (!file) {
    preview.hidden = true; preview.removeAttribute("src"); dropText.hidden = false; clearButton.hidden = true;
    return;
  }
  preview.src = URL.createObjectURL(file);
  preview.alt = t("selected_photo", { name: file.name });
  preview.hidden = false; dropText.hidden = true; clearButton.hidden = false;
}

function forgetPhoto() { droppedFile = null; imageInput.value = ""; showPreview(null); }

// The photo's size is checked here, before anything is sent: a too-large photo would only
// come back as a 413 after the whole upload.
function tooLargeMessage(file, otherBytes = 0) {
  if (file.size + otherBytes + FORM_FRAMING_BYTES <= PAGE.maxUploadBytes) return null;
  return t("photo_too_large", { name: file.name, size: megabytes(file.size), mb: PAGE.maxUploadMb });
}

function choosePhoto(file) {
  const refused = file && tooLargeMessage(file);
  if (refused) {
    forgetPhoto();
    clearResult();
    setStatus(predictStatus, refused, true);
    return;
  }
  setStatus(predictStatus, "");
  showPreview(file);
}

imageInput.addEventListener("change", () => { droppedFile = null; choosePhoto(currentFile()); });
clearButton.addEventListener("click", () => { forgetPhoto(); imageInput.focus(); });
const drop = $("drop");
["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("dragging"); }));
["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("dragging"); }));
drop.addEventListener("drop", (e) => {
  const file = e.dataTransfer.files && e.dataTransfer.files[0];
  if (file) { imageInput.value = ""; droppedFile = file; choosePhoto(file); }
});

// ---- predict ---------------------------------------------------------------------------
function clearResult() {
  $("result").hidden = true;
  for (const id of ["result-category", "result-path", "result-decision", "result-confidence", "result-explain", "result-timing"]) {
    $(id).textContent = "";
  }
  $("result-scores").replaceChildren();
  $("result-neighbors").replaceChildren();
}

function renderPrediction(p) {
  $("result-category").textContent = p.category || "—";
  $("result-path").textContent = (p.category_path || []).join(" › ");
  const badge = $("result-decision");
  const auto = p.decision === "auto";
  badge.textContent = t(auto ? "decision_auto" : "decision_review");
  badge.className = `badge ${auto ? "auto" : "review"}`;
  $("result-meter").value = p.confidence;
  $("result-confidence").textContent = pct(p.confidence);
  // reason codes in the page's language (listing-strings.js, shared with the listing and review pages)
  const reasons = reasonList(p.reasons || []);
  const explain = auto ? t("explain_auto") : reasons ? t("explain_review_reasons", { reasons }) : t("explain_review");
  const kind = p.kind && PAGE.strings[`kind_${p.kind.name}`] ? ` ${t("kind_read_as", { kind: t(`kind_${p.kind.name}`) })}` : "";
  $("result-explain").textContent = explain + kind;
  const scores = $("result-scores");
  scores.replaceChildren();
  for (const [name, value] of Object.entries(p.scores)) {
    const bar = el("span", { class: "bar" }, el("span", { style: `width:${(value * 100).toFixed(1)}%` }));
    scores.append(el("li", {}, el("span", { text: name }), bar, el("span", { class: "num", text: pct(value) })));
  }
  $("result-neighbors").replaceChildren(...p.neighbors.slice(0, 8).map(productCard));
  const timing = p.timing_ms || {};
  const sources = (p.modalities || []).map((m) => (PAGE.strings[`modality_${m}`] ?? m)).join(t("modality_join"));
  $("result-timing").textContent = t("timing", { ms: numberFormat.format(Math.round(timing.total || 0)), modalities: sources });
  $("result").hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = currentFile();
  const title = $("title").value.trim();
  const description = $("description").value.trim();
  if (!file && !title && !description) {
    clearResult();
    setStatus(predictStatus, t("need_input"), true);
    return;
  }
  const refused = file && tooLargeMessage(file, new Blob([title, description]).size);
  if (refused) {
    clearResult();
    setStatus(predictStatus, refused, true);
    return;
  }
  const data = new FormData();
  if (file) data.append("image", file, file.name);
  data.append("title", title);
  data.append("description", description);
  const button = $("predict-button");
  button.disabled = true;
  setStatus(predictStatus, t("predicting"));
  try {
    const prediction = await callApi("/api/v1/predict", { method: "POST", body: data }, "predict");
    renderPrediction(prediction);
    setStatus(predictStatus, "");
    $("result-category").focus?.();
  } catch (err) {
    clearResult();
    showError(predictStatus, err);
  } finally {
    button.disabled = false;
  }
});

// ---- search ----------------------------------------------------------------------------
$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("search-status");
  const results = $("search-results");
  const text = $("search-text").value.trim();
  if (!text) {
    results.replaceChildren();
    setStatus(status, t("search_need_text"), true);
    return;
  }
  const payload = { title: text, k: 12 };
  const category = $("search-category").value;
  if (category) payload.category = category;
  setStatus(status, t("searching"));
  try {
    const body = await callApi("/api/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
    }, "search");
    results.replaceChildren(...body.results.map(productCard));
    setStatus(status, t("search_count", { n: numberFormat.format(body.results.length) }));
  } catch (err) {
    results.replaceChildren();
    showError(status, err);
  }
});

// ---- categories for the filter --------------------------------------------------------
(async () => {
  try {
    const body = await callApi("/api/v1/categories", undefined, "categories");
    const select = $("search-category");
    for (const c of body.categories) select.append(el("option", { value: c.name, text: `${c.name} (${c.count})` }));
    $("index-info").textContent = t("index_info", { n: numberFormat.format(body.total) });
  } catch (err) {
    $("index-info").textContent = t("index_not_ready");
  }
})();
