// Shared helpers: DOM building (text only, never HTML from data), the API
// client (the token goes in the Authorization header and nowhere else) and
// small widgets.

const TOKEN_KEY = "lodestar.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An element with attributes and children; strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.reason = (error.details && error.details.reason) || "";
  }
}

/** A request to the gateway's REST API with the signed-in token. */
export async function api(method, path, body, { raw = false, form = null } = {}) {
  const headers = {};
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  let payload;
  if (form) {
    payload = form;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload });
  if (raw) return response;
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { text };
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

let statusTimer = null;

/** Announce a result (or an error) in the live status region. */
export function say(message, kind = "info") {
  const box = document.getElementById("status");
  box.textContent = message;
  box.className = `status ${kind}`;
  clearTimeout(statusTimer);
  if (kind !== "error") statusTimer = setTimeout(() => (box.textContent = ""), 6000);
}

export function fail(error) {
  say(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error), "error");
}

/** Payloads and other data as indented JSON text. */
export function jsonText(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

/** A labelled field: <label for> + control. */
export function field(label, control) {
  if (!control.id) control.id = `f-${Math.random().toString(36).slice(2, 9)}`;
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control);
}

export function select(options, attrs = {}) {
  return h(
    "select",
    attrs,
    options.map((o) =>
      typeof o === "string" ? h("option", { value: o }, o) : h("option", { value: o.value }, o.label),
    ),
  );
}

/** A modal confirmation; resolves true when confirmed. */
export function confirmAction(question, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-q" },
      h("p", { id: "confirm-q" }, question),
      h(
        "div",
        { class: "row" },
        h("button", { type: "button", class: "danger", onclick: () => close(true) }, confirmLabel),
        h("button", { type: "button", onclick: () => close(false) }, "Cancel"),
      ),
    );
    function close(answer) {
      dialog.close();
      dialog.remove();
      resolve(answer);
    }
    dialog.addEventListener("cancel", () => close(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A table from rows of cells (strings or nodes). */
export function table(caption, headings, rows) {
  return h(
    "table",
    {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headings.map((x) => h("th", { scope: "col" }, x)))),
    h(
      "tbody",
      {},
      rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c)))),
    ),
  );
}

/** The caller's collections, for pickers. */
export async function collectionNames() {
  const data = await api("GET", "/api/v1/collections?page_size=1000");
  return data.collections.map((c) => c.name);
}

/** A select of collections; remembers the last choice in the session. */
export async function collectionPicker(label = "Collection") {
  const names = await collectionNames();
  const control = select(names, { name: "collection" });
  const last = sessionStorage.getItem("lodestar.collection");
  if (last && names.includes(last)) control.value = last;
  control.addEventListener("change", () => sessionStorage.setItem("lodestar.collection", control.value));
  if (control.value) sessionStorage.setItem("lodestar.collection", control.value);
  return { control, wrapper: field(label, control), empty: names.length === 0 };
}

export function notAvailable(what) {
  return h(
    "p",
    { class: "notice", role: "note" },
    `${what} is not available on this gateway (its API answered 404).`,
  );
}

let openapi = null;

/** Whether the gateway serves a route (from its OpenAPI document), so that
 * a page can say plainly that a feature is not available here. */
export async function hasRoute(method, template) {
  if (!openapi) {
    const response = await fetch("/openapi.json");
    openapi = response.ok ? await response.json() : { paths: {} };
  }
  const operations = openapi.paths[template];
  return Boolean(operations && operations[method.toLowerCase()]);
}
