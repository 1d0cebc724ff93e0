// Reviewer page: one queued listing at a time (GET /api/v1/review), answered with the keyboard
// (POST /api/v1/review/<id>). Words from listing-strings.js; no framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "reviewToken";
let items = [];
let index = 0;
let busy = false;
let waiting = 0;
let photoUrl = null;

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

function applyStrings() {
  document.querySelectorAll("[data-text]").forEach((node) => { node.textContent = lt(node.dataset.text); });
  document.title = lt("review_title");
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(url, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${token()}` };
  const response = await fetch(url, { ...options, headers });
  if (response.status === 401 || response.status === 403) throw new Error(lt("error_token"));
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw Object.assign(new Error(detail), { status: response.status });
  }
  return response;
}

function setStatus(text, kind = "") {
  const node = $("status");
  node.textContent = text;
  node.className = `status ${kind}`.trim();
}

function pathText(path) { return (path || []).join(" › "); }

async function load(keepStatus = false) {
  $("token-forget").hidden = !token();
  if (!token()) { setStatus(lt("token_missing")); $("item").hidden = true; return; }
  if (!keepStatus) setStatus(lt("loading"));
  const params = new URLSearchParams({ limit: "50" });
  if ($("filter").value) params.set("category", $("filter").value);
  try {
    const body = await (await api(`/api/v1/review?${params}`)).json();
    items = body.listings;
    index = 0;
    waiting = body.waiting;
    $("count").textContent = lt("waiting_count", { n: waiting });
    if (!keepStatus) setStatus(items.length ? "" : lt("empty"));
    else if (!items.length) setStatus(`${$("status").textContent} ${lt("empty")}`, "done");
    show();
  } catch (err) {
    setStatus(err.message, "error");
    $("item").hidden = true;
  }
}

async function showPhoto(item) {
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = null;
  $("photo").hidden = true;
  $("no-photo").hidden = false;
  if (!item.image_url) return;
  try {
    const blob = await (await api(`${item.image_url}?size=512`)).blob();  // the token goes in a header
    if (items[index] !== item) return;
    photoUrl = URL.createObjectURL(blob);
    Object.assign($("photo"), { src: photoUrl, alt: item.title, hidden: false });
    $("no-photo").hidden = true;
  } catch (err) { /* the listing stays reviewable without its photo */ }
}

function neighbourCard(n) {
  const thumb = el("div", { class: "thumb" });
  if (n.image_url) thumb.append(el("img", { src: `${n.image_url.split("?")[0]}?size=192`, alt: n.name, loading: "lazy" }));
  else thumb.append(el("span", { class: "none", text: lt("no_photo") }));
  return el("li", { "data-id": n.id }, thumb, el("div", { class: "meta" },
    el("div", { class: "name", text: n.name, title: n.name }),
    el("div", { class: "cat", text: pathText((n.category_path || [n.category]).slice(0, 2)) }),
    el("div", { class: "score", text: lt("similarity", { score: n.score.toFixed(2) }) })));
}

function show() {
  const item = items[index];
  $("item").hidden = !item;
  if (!item) return;
  $("position").textContent = lt("position", { i: index + 1, n: items.length });
  $("item-title").textContent = item.title;
  $("item-description").textContent = item.description || "";
  $("item-category").textContent = pathText(item.category_path);
  $("item-confidence").textContent = item.confidence == null ? "" : lt("confidence", { pct: listingPercent(item.confidence) });
  $("reasons").replaceChildren(...item.reasons.map((r) => el("li", { text: reasonSentence(r) })));
  $("choices").replaceChildren(...item.top.slice(0, 3).map((choice, i) => {
    const button = el("button", {
      type: "button", "data-key": String(i + 1),
      text: lt("choice_button", { key: i + 1, path: pathText(choice.path), pct: listingPercent(choice.share) }),
    });
    button.addEventListener("click", () => decide({ category_path: choice.path }));
    return button;
  }));
  $("neighbours").replaceChildren(...item.neighbours.map(neighbourCard));
  $("other").value = "";
  $("other-new").checked = false;
  showPhoto(item);
}

function move(step) {
  if (!items.length) return;
  index = (index + step + items.length) % items.length;
  show();
}

async function decide(decision) {
  const item = items[index];
  if (!item || busy) return;
  busy = true;
  try {
    const response = await api(`/api/v1/review/${encodeURIComponent(item.id)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(decision),
    });
    const result = await response.json();
    const done = result.where === "index"
      ? lt("filed", { title: item.title, path: pathText(result.category_path) })
      : lt("rejected", { title: item.title });
    setStatus(done, "done");
    items.splice(index, 1);
    index = Math.min(index, Math.max(items.length - 1, 0));
    if (items.length) {
      waiting = Math.max(0, waiting - 1);
      $("count").textContent = lt("waiting_count", { n: waiting });
      show();
    } else {
      $("item").hidden = true;
      await load(true);
    }
  } catch (err) {
    if (err.status === 422 && decision.category && !decision.new_category) {
      setStatus(lt("other_unknown", { path: decision.category }), "error");  // a category the index lacks
      $("other-new").focus();
    } else {
      setStatus(lt("error", { detail: err.message }), "error");
    }
  } finally {
    busy = false;
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const item = items[index];
  if (!item || $("item").hidden) return;
  if (["1", "2", "3"].includes(event.key)) {
    const choice = item.top[Number(event.key) - 1];
    if (choice) { event.preventDefault(); decide({ category_path: choice.path }); }
  } else if (event.key === "r" || event.key === "R") {
    event.preventDefault(); decide({ reject: true });
  } else if (event.key === "ArrowRight" || event.key === "n") {
    event.preventDefault(); move(1);
  } else if (event.key === "ArrowLeft" || event.key === "p") {
    event.preventDefault(); move(-1);
  }
});

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  $("token").blur();  // the keys now answer listings, not the token field
  load();
});
$("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); items = []; load(); });
$("other-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("other").value.trim();
  // "new category" ticked: the reviewer creates it (the API refuses a path it does not hold otherwise)
  if (value) decide($("other-new").checked ? { category: value, new_category: true } : { category: value });
});
$("reject").addEventListener("click", () => decide({ reject: true }));
$("previous").addEventListener("click", () => move(-1));
$("next").addEventListener("click", () => move(1));
$("filter").addEventListener("change", () => load());

applyStrings();
(async () => {
  try {
    const body = await (await fetch("/api/v1/categories")).json();
    for (const c of body.categories) $("filter").append(el("option", { value: c.name, text: `${c.name} (${c.count})` }));
  } catch (err) { /* the filter stays at "all" */ }
})();
load();
