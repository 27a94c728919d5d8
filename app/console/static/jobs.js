// Jobs: the recent jobs (the caller's; everyone's for an admin), and one job's page with its
// params, error, outputs, event timeline and webhook deliveries.
import { ApiError, all, get, post, sse } from "./api.js";
import { TERMINAL, cancelJob, userNames } from "./actions.js";
import { badge, duration, h, jsonBlock, outputView, problemBox, progressBar, section, setProgress, table, when } from "./dom.js";

export function render(main, ctx, args) {
  return args[0] ? renderJob(main, ctx, args[0]) : renderList(main, ctx);
}

const jobHref = (job) => `#/jobs/${encodeURIComponent(job.id)}${job.user_id ? `/${encodeURIComponent(job.user_id)}` : ""}`;

function renderList(main, ctx) {
  const admin = ctx.me.is_admin;
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const more = h("button", { type: "button", hidden: true }, "Load more");
  main.append(
    section(admin ? "Recent jobs (every user)" : "Your recent jobs", body, more),
  );
  let names = new Map();
  let rows = [];
  let cursor = null;
  let debounce = null;
  const base = admin ? "/v1/admin/jobs" : "/v1/jobs";

  const row = (j) =>
    h(
      "tr",
      { "data-job": j.id, "data-status": j.status },
      h("td", {}, h("a", { href: jobHref(j) }, j.id.slice(0, 8))),
      h("td", {}, badge(j.status)),
      h("td", {}, j.template || "workflow"),
      admin ? h("td", { class: "job-user", title: j.user_id }, names.get(j.user_id) || j.user_id) : null,
      h("td", {}, when(j.created_at)),
      h("td", {}, duration(j)),
      h("td", { class: "thumbs" }, j.outputs.slice(0, 4).map((o) => outputView(o, { thumb: true }))),
    );

  function draw() {
    body.replaceChildren(
      rows.length
        ? table(["Job", "Status", "Template", admin ? "User" : null, "Created", "Duration", "Outputs"].filter(Boolean), rows.map(row))
        : h("p", {}, "No job yet. The playground makes one."),
    );
    more.hidden = !cursor;
  }

  async function load(reset) {
    try {
      if (admin && !names.size) names = await userNames();
      const page = await get(`${base}?limit=25${!reset && cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      rows = reset ? page.items : [...rows, ...page.items];
      cursor = page.next_cursor;
      draw();
    } catch (err) {
      body.replaceChildren(problemBox(err));
    }
  }
  more.addEventListener("click", () => load(false));
  // The caller's own jobs change live: re-read the first page when one changes status.
  const unlisten = ctx.onLive((frame) => {
    if (frame.event !== "status") return;
    clearTimeout(debounce);
    debounce = setTimeout(() => load(true), 300);
  });
  load(true);
  return () => {
    clearTimeout(debounce);
    unlisten();
  };
}

// Another user's job answers 404 on /v1/jobs/{id} (for admins too): an admin reads any user's job,
// its events and deliveries under /v1/admin/jobs/{id}. `base` is where this job's routes live.
async function findJob(ctx, id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  try {
    return { job: await get(path), base: path };
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404 || !ctx.me.is_admin) throw err;
  }
  const admin = `/v1/admin/jobs/${encodeURIComponent(id)}`;
  return { job: await get(admin), base: admin };
}

function renderJob(main, ctx, id) {
  const head = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const status = h("div");
  const outputs = h("div", { class: "outputs" });
  const timeline = h("ol", { class: "timeline", "aria-live": "polite" });
  const deliveries = h("div", { class: "deliveries" });
  let deliveriesTimer = null;
  const aborter = new AbortController();
  main.append(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), status, head);
  let job = null;
  let base = null;

  function drawHead() {
    const cancel = !TERMINAL.has(job.status)
      ? h(
          "button",
          {
            type: "button",
            class: "danger",
            id: "cancel-job",
            onclick: async () => {
              try {
                job = { ...job, ...(await cancelJob(job, ctx.me)) };
                status.replaceChildren();
                drawHead();
              } catch (err) {
                status.replaceChildren(problemBox(err));
              }
            },
          },
          "Cancel job",
        )
      : null;
    // replaceChildren would show a null as the text "null".
    const parts = [
      section(
        h("span", {}, "Job ", h("code", {}, job.id), " ", h("span", { id: "job-status" }, badge(job.status))),
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "Template"), h("dd", {}, job.template || "raw workflow"),
          job.user_id ? [h("dt", {}, "User"), h("dd", {}, job.user_id)] : null,
          h("dt", {}, "Created"), h("dd", {}, when(job.created_at)),
          h("dt", {}, "Started"), h("dd", {}, when(job.started_at)),
          h("dt", {}, "Finished"), h("dd", {}, when(job.finished_at)),
          h("dt", {}, "Duration"), h("dd", {}, duration(job)),
          h("dt", {}, "Priority"), h("dd", {}, job.priority),
          h("dt", {}, "Attempts"), h("dd", {}, job.attempts),
          job.status === "queued"
            ? [h("dt", {}, "Queue position"), h("dd", {}, job.queue_position ?? "—"), h("dt", {}, "Waiting because"), h("dd", {}, job.waiting_reason || "—")]
            : null,
          job.progress || !TERMINAL.has(job.status)
            ? [h("dt", {}, "Progress"), h("dd", { id: "job-progress" }, progressBar(job.progress, "job progress"))]
            : null,
        ),
        cancel,
      ),
      job.error
        ? section("Error", h("p", { class: "error-text" }, `${job.error.type}: ${job.error.message}`), job.error.node_id ? h("p", {}, `Node ${job.error.node_id} (${job.error.node_type || "?"})`) : null)
        : null,
      section("Params", jsonBlock(job.params)),
      Object.keys(job.metadata || {}).length ? section("Metadata", jsonBlock(job.metadata)) : null,
      section("Outputs", outputs),
      section("Event timeline", timeline),
      section("Webhook deliveries", deliveries),
    ];
    head.replaceChildren(...parts.filter(Boolean));
    drawOutputs();
  }

  function drawOutputs() {
    outputs.replaceChildren(
      ...(job.outputs.length
        ? job.outputs.map((o) => h("figure", {}, outputView(o), h("figcaption", {}, `${o.filename} · ${o.content_type} · ${o.size} bytes`)))
        : [h("p", { class: "muted" }, job.outputs_expired_at ? "Deleted by retention." : "No output yet.")]),
    );
  }

  function addEvent(ev) {
    const d = ev.data || {};
    const what =
      ev.event === "status" ? `${d.status}${d.error ? ` (${d.error.type})` : ""}` :
      ev.event === "progress" ? `${d.value} / ${d.max}${d.node ? ` (node ${d.node})` : ""}` :
      ev.event === "output" ? d.filename : "";
    const at = ev.event === "status" ? d.finished_at || d.started_at || d.created_at : null;
    timeline.append(h("li", { "data-event": ev.event }, h("span", { class: "event-name" }, ev.event), " ", what, at ? [" · ", when(at)] : null));
  }

  async function follow() {
    // From the first logged event (Last-Event-ID: 0): the whole timeline, then live until the end.
    try {
      await sse(
        `${base}/events`,
        (ev) => {
          if (ev.event === "status") {
            job = { ...job, ...ev.data };
            if (ev.id !== null) addEvent(ev);
            const badgeHolder = head.querySelector("#job-status");
            if (badgeHolder) badgeHolder.replaceChildren(badge(job.status));
            // The timeline and outputs are kept elements: a redraw moves them, with what they hold.
            if (TERMINAL.has(job.status)) drawHead();
          } else if (ev.event === "progress") {
            addEvent(ev);
            const bar = head.querySelector("#job-progress");
            if (bar) setProgress(bar, ev.data);
          } else if (ev.event === "output") {
            addEvent(ev);
            if (!job.outputs.some((o) => o.id === ev.data.id)) job = { ...job, outputs: [...job.outputs, ev.data] };
            drawOutputs();
          }
        },
        { lastEventId: 0, signal: aborter.signal },
      );
    } catch (err) {
      if (err.name !== "AbortError") timeline.replaceChildren(h("li", {}, problemBox(err)));
    }
  }

  async function loadDeliveries() {
    clearTimeout(deliveriesTimer);
    try {
      const items = await all(`${base}/webhook-deliveries`, 100);
      // Deliveries still being attempted are re-read until they settle.
      if (items.some((d) => d.status === "pending") && !aborter.signal.aborted) deliveriesTimer = setTimeout(loadDeliveries, 2000);
      deliveries.replaceChildren(
        items.length
          ? table(
              ["Event", "URL", "Status", "Attempts", "Last error", "Next attempt", ctx.me.is_admin ? "" : null].filter((x) => x !== null),
              items.map((d) =>
                h(
                  "tr",
                  {},
                  h("td", {}, d.event),
                  h("td", { class: "url" }, d.url),
                  h("td", {}, badge(d.status)),
                  h("td", { class: "attempts" }, d.attempts.length),
                  h("td", {}, d.last_error || "—"),
                  h("td", {}, when(d.next_attempt_at)),
                  ctx.me.is_admin
                    ? h("td", {}, h("button", {
                        type: "button",
                        onclick: async () => {
                          try {
                            await post(`/v1/admin/webhook-deliveries/${encodeURIComponent(d.id)}/redeliver`);
                            loadDeliveries();
                          } catch (err) {
                            status.replaceChildren(problemBox(err));
                          }
                        },
                      }, "Redeliver"))
                    : null,
                ),
              ),
            )
          : h("p", { class: "muted" }, "No webhook for this job."),
      );
    } catch (err) {
      deliveries.replaceChildren(problemBox(err));
    }
  }

  (async () => {
    try {
      const found = await findJob(ctx, id);
      job = found.job;
      base = found.base;
      drawHead();
      follow();
      loadDeliveries();
    } catch (err) {
      head.replaceChildren(problemBox(err));
    }
  })();
  return () => {
    aborter.abort();
    clearTimeout(deliveriesTimer);
  };
}
