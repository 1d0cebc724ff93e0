// Seller page: once a category is suggested, list the product (POST /api/v1/listings, the
// seller's API_TOKEN) and say in plain words what happens next: filed in a category, or
// waiting for a reviewer and why. Words from listing-strings.js; reads the page's own form.
"use strict";

(() => {
  const panel = document.getElementById("listing-panel");
  if (!panel) return;
  const TOKEN_KEY = "writerToken";
  const node = (tag, attrs = {}, text = "") => {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text) n.textContent = text;
    return n;
  };
  const token = node("input", { type: "password", id: "listing-token", autocomplete: "off" });
  const button = node("button", { type: "button", id: "list-button", class: "primary" }, lt("list_button"));
  const next = node("p", { id: "listing-next", class: "status", role: "status", "aria-live": "polite" });
  panel.replaceChildren(
    node("h3", {}, lt("list_title")),
    node("p", { class: "hint" }, lt("list_hint")),
    node("label", { for: "listing-token" }, lt("list_token_label")),
    token, button, next,
  );
  panel.hidden = false;

  const say = (text, where = "", isError = false) => {
    next.textContent = text;
    next.dataset.where = where;
    next.classList.toggle("error", isError);
  };
  const path = (p) => (p || []).join(" › ");

  button.addEventListener("click", async () => {
    const title = document.getElementById("title").value.trim();
    if (!title) { say(lt("list_needs_text"), "", true); return; }
    if (token.value.trim()) sessionStorage.setItem(TOKEN_KEY, token.value.trim());
    const data = new FormData();
    const file = typeof currentFile === "function" ? currentFile() : null;  // app.js' chosen photo
    if (file) data.append("image", file, file.name);
    data.append("title", title);
    data.append("description", document.getElementById("description").value.trim());
    button.disabled = true;
    say(lt("list_sending"));
    try {
      const response = await fetch("/api/v1/listings", {
        method: "POST", body: data, headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` },
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) { say(lt("error", { detail: (body && body.detail) || `HTTP ${response.status}` }), "", true); return; }
      if (body.where === "index") {
        say(lt("next_filed", { path: path(body.category_path) }), "index");
      } else {
        const why = lt("next_why", { reasons: reasonList(body.reasons) });
        const decided = body.status === "done" ? ` ${lt("next_decided")}` : "";
        say(`${lt("next_review", { path: path(body.category_path) })} ${why}${decided}`, "review");
      }
    } catch (err) {
      say(lt("error", { detail: err.message }), "", true);
    } finally {
      button.disabled = false;
    }
  });
})();
