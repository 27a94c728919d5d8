// The console's shell: log in with a key (kept in sessionStorage only), the navigation, and a
// router over location.hash so every page has a link and the server serves one file.
import { ApiError, clearKey, get, getKey, liveEvents, setKey } from "./api.js";
import { h, problemBox } from "./dom.js";
import * as jobs from "./jobs.js";
import * as playground from "./playground.js";
import * as pool from "./pool.js";
import * as queue from "./queue.js";
import * as users from "./users.js";

const PAGES = [
  { path: "pool", title: "Pool", admin: true, page: pool },
  { path: "queue", title: "Queue", admin: true, page: queue },
  { path: "jobs", title: "Jobs", admin: false, page: jobs },
  { path: "playground", title: "Playground", admin: false, page: playground },
  { path: "users", title: "Users", admin: true, page: users },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const logoutButton = document.getElementById("logout");

// What every page gets: the caller, and subscribers to the one /v1/ws connection.
const ctx = {
  me: null,
  listeners: new Set(),
  onLive(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  },
};
let socket = null;
let cleanup = null;

function loginForm(error) {
  nav.hidden = true;
  logoutButton.hidden = true;
  who.textContent = "";
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h(
    "form",
    { class: "card login", id: "login-form" },
    h("h1", {}, "Console"),
    h("p", { class: "muted" }, "Your API key stays in this tab (sessionStorage) and goes only into request headers."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("button", { type: "submit" }, "Log in"),
    error ? problemBox(error) : null,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setKey(input.value.trim());
    await start();
  });
  main.replaceChildren(form);
  input.focus();
}

function logout() {
  clearKey();
  ctx.me = null;
  if (socket) socket.close();
  socket = null;
  if (cleanup) cleanup();
  cleanup = null;
  history.replaceState(null, "", "#/");
  loginForm();
}

function renderNav() {
  nav.replaceChildren(
    ...PAGES.filter((p) => !p.admin || ctx.me.is_admin).map((p) => h("a", { href: `#/${p.path}`, "data-page": p.path }, p.title)),
  );
  nav.hidden = false;
  logoutButton.hidden = false;
  who.textContent = `${ctx.me.name}${ctx.me.is_admin ? " (admin)" : ""}`;
}

async function start() {
  if (!getKey()) return loginForm();
  try {
    ctx.me = await get("/v1/me");
  } catch (err) {
    clearKey();
    return loginForm(err instanceof ApiError ? err : { title: "Could not log in", detail: String(err) });
  }
  renderNav();
  if (socket) socket.close();
  socket = liveEvents((frame) => ctx.listeners.forEach((fn) => fn(frame)), { all: Boolean(ctx.me.is_admin) });
  route();
}

function route() {
  if (!ctx.me) return;
  if (cleanup) cleanup();
  cleanup = null;
  const [path, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const allowed = PAGES.filter((p) => !p.admin || ctx.me.is_admin);
  const entry = allowed.find((p) => p.path === path) || allowed.find((p) => p.path === (ctx.me.is_admin ? "pool" : "jobs"));
  // The address always names the page shown, so it can be bookmarked or shared.
  if (entry.path !== path) history.replaceState(null, "", `#/${entry.path}`);
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.page === entry.path) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${entry.title} · comfy-gateway console`;
  main.replaceChildren();
  try {
    cleanup = entry.page.render(main, ctx, rest.map(decodeURIComponent)) || null;
  } catch (err) {
    main.replaceChildren(problemBox(err));
  }
}

// Unexpected failures are shown on the page, not only in the browser's console.
window.addEventListener("unhandledrejection", (ev) => {
  ev.preventDefault();
  main.prepend(problemBox(ev.reason instanceof ApiError ? ev.reason : { title: "Error", detail: String(ev.reason) }));
});
window.addEventListener("hashchange", route);
// The skip link moves focus without touching location.hash, which is the router's.
document.querySelector(".skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  main.focus();
});
logoutButton.addEventListener("click", logout);
start();
