// The console's shell: sign-in, the navigation the token may use, and the
// hash router that renders one page at a time.

import { api, fail, h, say, setToken, token } from "./lib.js";

const PAGES = [
  { id: "collections", title: "Collections", needs: ["SearchVectors"], module: "./pages/collections.js" },
  { id: "points", title: "Points", needs: ["SearchVectors"], module: "./pages/points.js" },
  { id: "documents", title: "Documents", needs: ["SearchVectors"], module: "./pages/documents.js" },
  { id: "search", title: "Search", needs: ["SearchVectors"], module: "./pages/search.js" },
  { id: "chat", title: "Chat", needs: ["GenerateText"], module: "./pages/chat.js" },
  { id: "analytics", title: "Analytics", needs: ["ViewAnalytics"], module: "./pages/analytics.js" },
  { id: "health", title: "Health", needs: ["HealthCheck"], module: "./pages/health.js" },
];

const session = { me: null };

/** What every page gets: the caller and a permission test. */
const ctx = {
  get me() {
    return session.me;
  },
  can(permission) {
    return Boolean(session.me && session.me.permissions.includes(permission));
  },
};

function allowed(page) {
  return page.needs.every((p) => ctx.can(p));
}

function renderNav() {
  const nav = document.getElementById("nav");
  nav.replaceChildren(
    h(
      "ul",
      {},
      PAGES.filter(allowed).map((page) =>
        h("li", {}, h("a", { href: `#/${page.id}`, id: `nav-${page.id}` }, page.title)),
      ),
    ),
  );
  nav.hidden = false;
  const me = session.me;
  document.getElementById("who").replaceChildren(
    h("span", { id: "whoami" }, `${me.subject} (${me.roles.join(", ") || "no roles"})`),
    me.tenant ? h("span", {}, ` · tenant ${me.tenant}`) : "",
    " ",
    h("button", { type: "button", id: "signout", onclick: signOut }, "Sign out"),
  );
}

async function route() {
  const target = document.getElementById("page");
  if (!session.me) return;
  const wanted = (location.hash.replace(/^#\/?/, "").split("?")[0] || "collections").split("/")[0];
  const page = PAGES.find((p) => p.id === wanted && allowed(p)) || PAGES.find(allowed);
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.id === `nav-${page && page.id}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!page) {
    target.replaceChildren(h("p", {}, "This token may not use any page of the console."));
    return;
  }
  const root = h("section", { class: "page", "aria-labelledby": "page-title" }, h("h2", { id: "page-title" }, page.title));
  target.replaceChildren(root);
  document.title = `${page.title} · Lodestar Console`;
  try {
    const module = await import(page.module);
    await module.render(ctx, root);
  } catch (error) {
    fail(error);
  }
}

async function signIn(value) {
  setToken(value);
  try {
    session.me = await api("GET", "/api/v1/me");
  } catch (error) {
    setToken(null);
    session.me = null;
    fail(error);
    return false;
  }
  document.getElementById("signin").hidden = true;
  renderNav();
  await route();
  return true;
}

function signOut() {
  setToken(null);
  session.me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").replaceChildren();
  document.getElementById("page").replaceChildren();
  document.getElementById("signin").hidden = false;
  say("Signed out.");
}

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = document.getElementById("token");
  if (await signIn(box.value.trim())) {
    box.value = "";
    say(`Signed in as ${session.me.subject}.`);
  }
});

window.addEventListener("hashchange", route);

const saved = token();
if (saved) signIn(saved);
