// Playground (any key): a form made from a template's params_schema, submitted to
// /v1/generate, followed live over SSE until its outputs appear; the same request as curl.
import { api, get, post, sse } from "./api.js";
import { TERMINAL } from "./actions.js";
import { badge, h, outputView, problemBox, progressBar, section, setProgress } from "./dom.js";

const IMAGE_FORMAT = "comfy-gateway-image";

function field(name, schema, required, onChange) {
  const id = `param-${name}`;
  const help = schema.description ? h("small", { id: `${id}-help`, class: "help" }, schema.description) : null;
  const common = { id, name, "aria-describedby": help ? `${id}-help` : null, required: required || null };
  let input;
  let extra = null;
  if (schema.format === IMAGE_FORMAT) {
    // The param takes an upload id (or a URL): a chosen file is uploaded and its id filled in.
    input = h("input", { ...common, type: "text", placeholder: "upload id or https:// URL" });
    const picker = h("input", { type: "file", accept: "image/*", id: `${id}-file`, "aria-label": `Upload an image for ${name}` });
    const note = h("span", { class: "muted upload-note", "aria-live": "polite" });
    picker.addEventListener("change", async () => {
      if (!picker.files.length) return;
      const form = new FormData();
      form.append("file", picker.files[0]);
      note.textContent = "Uploading…";
      try {
        const up = await api("POST", "/v1/uploads", undefined, { form });
        input.value = up.id;
        note.textContent = `Uploaded ${up.filename || "image"} (${up.width ?? "?"}×${up.height ?? "?"}).`;
        onChange();
      } catch (err) {
        note.replaceChildren(problemBox(err));
      }
    });
    extra = h("span", { class: "upload" }, picker, note);
  } else if (Array.isArray(schema.enum)) {
    input = h("select", common, schema.enum.map((v) => h("option", { value: String(v), selected: v === schema.default || null }, String(v))));
  } else if (schema.type === "boolean") {
    input = h("input", { ...common, type: "checkbox", checked: schema.default === true || null, required: null });
  } else if (schema.type === "integer" || schema.type === "number") {
    input = h("input", {
      ...common,
      type: "number",
      inputmode: schema.type === "integer" ? "numeric" : "decimal",
      min: schema.minimum ?? null,
      max: schema.maximum ?? null,
      step: schema.multipleOf ?? (schema.type === "integer" ? 1 : "any"),
      value: schema.default !== undefined ? String(schema.default) : null,
      placeholder: schema.default === undefined && !required ? "random / server default" : null,
    });
  } else {
    const long = (schema.maxLength ?? 10000) > 255;
    input = h(long ? "textarea" : "input", {
      ...common,
      type: long ? null : "text",
      rows: long ? 2 : null,
      minlength: schema.minLength ?? null,
      maxlength: schema.maxLength ?? null,
    });
    if (schema.default !== undefined) input.value = String(schema.default);
  }
  input.dataset.param = name;
  input.addEventListener("input", onChange);
  input.addEventListener("change", onChange);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, name, required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null),
    input,
    extra,
    help,
  );
}

// The params to send: what was filled in and differs from the default (the server fills defaults).
function collect(form, schema) {
  const params = {};
  for (const el of form.querySelectorAll("[data-param]")) {
    const name = el.dataset.param;
    const s = schema.properties[name] || {};
    let value;
    if (el.type === "checkbox") value = el.checked;
    else if (el.value === "") continue;
    else if (s.type === "integer" || s.type === "number") value = Number(el.value);
    else value = el.value;
    if (s.default !== undefined && value === s.default) continue;
    params[name] = value;
  }
  return params;
}

const shellQuote = (s) => `'${s.replaceAll("'", "'\\''")}'`;

export function render(main, ctx) {
  const picker = h("select", { id: "template", name: "template" });
  const description = h("p", { class: "muted" });
  const form = h("form", { id: "params-form", class: "params", novalidate: null });
  const curl = h("pre", { id: "curl", class: "curl", tabindex: "0", "aria-label": "The same request with curl" });
  const result = h("div", { id: "result" }, section("Result", h("p", { class: "muted" }, "Progress and outputs appear here.")));
  const submit = h("button", { type: "submit", form: "params-form" }, "Generate");
  // Form and result side by side on a wide screen, one above the other on a phone.
  main.classList.add("wide");
  main.append(h("div", { class: "playground" },
    section(
      "Playground",
      h("div", { class: "field" }, h("label", { for: "template" }, "Template"), picker),
      description,
      form,
      submit,
    ),
    h("div", { class: "side" }, section("The same request", curl), result),
  ));
  let templates = [];
  let current = null;
  const aborter = new AbortController();

  const body = () => ({ template: current.name, params: collect(form, current.params_schema) });
  const updateCurl = () => {
    if (!current) return;
    curl.textContent =
      `curl -s ${location.origin}/v1/generate \\\n  -H "Authorization: Bearer $GATEWAY_API_KEY" \\\n` +
      `  -H 'Content-Type: application/json' \\\n  -d ${shellQuote(JSON.stringify(body()))}`;
  };

  function choose(name) {
    current = templates.find((t) => t.name === name);
    description.textContent = current.description || "";
    const schema = current.params_schema;
    const required = new Set(schema.required || []);
    form.replaceChildren(...Object.entries(schema.properties || {}).map(([n, s]) => field(n, s, required.has(n), updateCurl)));
    updateCurl();
  }

  function showJob(job) {
    const status = h("span", { id: "run-status" }, badge(job.status));
    const bar = h("span", { id: "run-progress" }, progressBar(job.progress, "generation progress"));
    const outputs = h("div", { class: "outputs", id: "run-outputs" });
    const error = h("div");
    result.replaceChildren(
      section(
        h("span", {}, "Job ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, id: "run-link" }, job.id)),
        h("p", {}, "Status: ", status),
        h("p", {}, "Progress: ", bar),
        error,
        outputs,
      ),
    );
    const seen = new Set();
    const addOutput = (o) => {
      if (seen.has(o.id)) return;
      seen.add(o.id);
      outputs.append(h("figure", {}, outputView(o), h("figcaption", {}, o.filename)));
    };
    sse(
      `/v1/jobs/${encodeURIComponent(job.id)}/events`,
      (ev) => {
        if (ev.event === "progress") setProgress(bar, ev.data);
        else if (ev.event === "output") addOutput(ev.data);
        else if (ev.event === "status") {
          status.replaceChildren(badge(ev.data.status));
          if (ev.data.progress) setProgress(bar, ev.data.progress);
          (ev.data.outputs || []).forEach(addOutput);
          if (ev.data.error) error.replaceChildren(problemBox({ title: ev.data.error.type, detail: ev.data.error.message }));
          if (TERMINAL.has(ev.data.status)) status.dataset.final = ev.data.status;
        }
      },
      { signal: aborter.signal },
    ).catch((err) => {
      if (err.name !== "AbortError") error.replaceChildren(problemBox(err));
    });
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!form.reportValidity()) return;
    submit.disabled = true;
    try {
      showJob(await post("/v1/generate", body()));
    } catch (err) {
      result.replaceChildren(problemBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  picker.addEventListener("change", () => choose(picker.value));

  (async () => {
    try {
      const page = await get("/v1/templates?limit=100");
      templates = page.items;
      if (!templates.length) {
        form.replaceChildren(h("p", {}, "No template is registered."));
        return;
      }
      picker.replaceChildren(...templates.map((t) => h("option", { value: t.name }, t.name)));
      choose(templates[0].name);
    } catch (err) {
      form.replaceChildren(problemBox(err));
    }
  })();
  return () => {
    aborter.abort();
    main.classList.remove("wide");
  };
}
