// Pool (admins): every backend's health, load and capabilities, with drain and resume; it
// refreshes by itself.
import { all, post } from "./api.js";
import { badge, h, keepFocus, problemBox, section, when } from "./dom.js";

const REFRESH_MS = 2000;

function models(caps) {
  if (!caps) return h("span", { class: "muted" }, "not read yet");
  const kinds = Object.entries(caps.models || {}).filter(([, files]) => files.length);
  return h(
    "span",
    {},
    `${caps.node_classes} node classes`,
    kinds.length ? h("ul", { class: "inline-list" }, kinds.map(([kind, files]) => h("li", { title: files.join(", ") }, `${kind}: ${files.length}`))) : null,
  );
}

function backendCard(b, act) {
  const draining = b.state === "draining";
  return h(
    "article",
    { class: "backend", "data-backend": b.url, "data-state": b.state, "data-health": b.health.status },
    h(
      "header",
      {},
      h("h3", {}, b.url),
      badge(b.health.status, `health-${b.health.status}`),
      draining ? badge("draining") : badge("active"),
    ),
    h(
      "dl",
      {},
      h("dt", {}, "Health"),
      h("dd", {}, `${b.health.status} since `, when(b.health.since), b.health.connected ? "" : " · socket down"),
      b.health.last_error ? [h("dt", {}, "Last error"), h("dd", { class: "error-text" }, b.health.last_error)] : null,
      h("dt", {}, "Load"),
      h("dd", {}, `${b.load.in_flight} in flight · ${b.load.backend_queue ?? "?"} queued there · ${b.jobs.count} unfinished jobs`),
      h("dt", {}, "Capabilities"),
      h("dd", {}, models(b.capabilities)),
      h("dt", {}, "Source"),
      h("dd", {}, `${b.source}, added `, when(b.added_at)),
    ),
    h(
      "button",
      { type: "button", "data-focus": `${b.id}-toggle`, onclick: () => act(b, draining ? "resume" : "drain") },
      draining ? "Resume" : "Drain",
    ),
  );
}

export function render(main, ctx) {
  const list = h("div", { class: "backends", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const status = h("div");
  main.append(section("Backend pool", status, list));
  let stopped = false;
  let timer = null;

  async function act(b, action) {
    try {
      await post(`/v1/admin/backends/${encodeURIComponent(b.id)}/${action}`);
      status.replaceChildren();
    } catch (err) {
      status.replaceChildren(problemBox(err));
    }
    await refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const items = await all("/v1/admin/backends");
      if (stopped) return;
      keepFocus(list, () =>
        list.replaceChildren(...(items.length ? items.map((b) => backendCard(b, act)) : [h("p", {}, "No backend is registered.")])),
      );
    } catch (err) {
      if (!stopped) list.replaceChildren(problemBox(err));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
