// Small DOM helpers shared by the pages: building elements (text is always set as text, never
// parsed as HTML), showing problems, formatting times and outputs.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// An API error as the problem's title and detail, never a blank page.
export function problemBox(err) {
  const title = err.title || "Something went wrong";
  const detail = err.detail || err.message || "";
  const fieldErrors = (err.problem && Array.isArray(err.problem.errors) ? err.problem.errors : []).map((e) =>
    h("li", {}, e.field ? h("code", {}, e.field) : null, e.field ? ": " : "", e.message || JSON.stringify(e)),
  );
  return h(
    "div",
    { class: "problem", role: "alert" },
    h("strong", { class: "problem-title" }, title),
    detail ? h("p", { class: "problem-detail" }, detail) : null,
    fieldErrors.length ? h("ul", {}, fieldErrors) : null,
  );
}

export function showProblem(container, err) {
  container.replaceChildren(problemBox(err));
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: iso }, `${d.toLocaleString()} (${ago(d)})`);
}

export function ago(date) {
  const s = Math.round((Date.now() - date.getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function duration(job) {
  if (!job.started_at) return "—";
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  const s = (end - new Date(job.started_at)) / 1000;
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function progressBar(progress, label) {
  const value = progress ? progress.value : 0;
  const max = progress && progress.max ? progress.max : 1;
  return h(
    "span",
    { class: "progress" },
    h("progress", { value, max, "aria-label": label || "progress" }),
    h("span", { class: "progress-text" }, progress ? `${progress.value} / ${progress.max}` : "—"),
  );
}

export function setProgress(container, progress) {
  const bar = container.querySelector("progress");
  const text = container.querySelector(".progress-text");
  if (!bar || !progress) return;
  bar.max = progress.max || 1;
  bar.value = progress.value;
  text.textContent = `${progress.value} / ${progress.max}`;
}

// Images are asked for as WebP where the gateway converts them: far smaller thumbnails.
export function thumbUrl(output) {
  return output.content_type.startsWith("image/") && output.content_type !== "image/gif"
    ? `${output.url}${output.url.includes("?") ? "&" : "?"}format=webp`
    : output.url;
}

export function outputView(output, { thumb = false } = {}) {
  const type = output.content_type || "";
  const name = output.filename;
  if (type.startsWith("image/")) {
    const img = h("img", { src: thumb ? thumbUrl(output) : output.url, alt: name, loading: "lazy", class: thumb ? "thumb" : "output-image" });
    return thumb ? img : h("a", { href: output.url, target: "_blank", rel: "noopener" }, img);
  }
  if (type.startsWith("audio/")) return h("audio", { controls: true, src: output.url, "aria-label": name });
  if (type.startsWith("video/")) return h("video", { controls: true, src: output.url, "aria-label": name, class: "output-video" });
  if (type.startsWith("text/") || type === "application/json") {
    const pre = h("pre", { class: "output-text" }, "…");
    fetch(output.url)
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((t) => (pre.textContent = t))
      .catch((e) => (pre.textContent = `Could not read ${name}: ${e.message}`));
    return pre;
  }
  return h("a", { href: output.url }, name);
}

export function jsonBlock(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function table(headers, rows, { caption } = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    ),
  );
}

// A page that re-renders on a timer keeps keyboard focus on "the same" control.
export function keepFocus(container, render) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focus : null;
  render();
  if (key) {
    const again = container.querySelector(`[data-focus="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}
