// Queue (admins): queued and running jobs per user, the oldest waiting job and why it waits,
// running jobs with live progress, and cancel. Progress of every user's jobs comes from the admin's
// /v1/ws?all=true as it happens; the list is re-read on each status change, and every few seconds.
import { all } from "./api.js";
import { cancelJob, userNames } from "./actions.js";
import { badge, h, keepFocus, problemBox, progressBar, section, setProgress, table, when } from "./dom.js";

const REFRESH_MS = 3000;

export function render(main, ctx) {
  const status = h("div");
  const perUser = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const oldest = h("div");
  const running = h("div");
  const queued = h("div");
  main.append(
    status,
    section("Per user", perUser),
    section("Oldest waiting job", oldest),
    section("Running", running),
    section("Queued", queued),
  );
  let names = new Map();
  let stopped = false;
  let timer = null;

  const userLabel = (id) => h("span", { title: id }, names.get(id) || id);
  const jobLink = (job) => h("a", { href: `#/jobs/${encodeURIComponent(job.id)}/${encodeURIComponent(job.user_id)}` }, job.id.slice(0, 8));
  const cancelButton = (job) =>
    h(
      "button",
      {
        type: "button",
        class: "danger",
        "data-focus": `cancel-${job.id}`,
        "aria-label": `Cancel job ${job.id}`,
        onclick: async () => {
          try {
            await cancelJob(job, ctx.me);
            status.replaceChildren();
          } catch (err) {
            status.replaceChildren(problemBox(err));
          }
          refresh();
        },
      },
      "Cancel",
    );

  function draw(jobs) {
    const byUser = new Map();
    for (const job of jobs) {
      const row = byUser.get(job.user_id) || { queued: 0, running: 0 };
      row[job.status] += 1;
      byUser.set(job.user_id, row);
    }
    perUser.replaceChildren(
      byUser.size
        ? table(
            ["User", "Queued", "Running"],
            [...byUser].map(([id, c]) => h("tr", {}, h("td", {}, userLabel(id)), h("td", {}, c.queued), h("td", {}, c.running))),
          )
        : h("p", {}, "Nothing is queued or running."),
    );
    const waiting = jobs.filter((j) => j.status === "queued");
    const first = waiting[waiting.length - 1]; // newest first: the last is the oldest
    oldest.replaceChildren(
      first
        ? h(
            "p",
            { class: "oldest" },
            jobLink(first),
            ` (${first.template || "workflow"}, `,
            userLabel(first.user_id),
            ") waiting since ",
            when(first.created_at),
            h("br"),
            h("strong", {}, "Why: "),
            h("span", { class: "waiting-reason" }, first.waiting_reason || "none given: it waits for a free slot on a healthy, active backend"),
          )
        : h("p", {}, "No job is waiting."),
    );
    const run = jobs.filter((j) => j.status === "running");
    running.replaceChildren(
      run.length
        ? table(
            ["Job", "User", "Template", "Started", "Progress", ""],
            run.map((j) =>
              h(
                "tr",
                { "data-job": j.id },
                h("td", {}, jobLink(j)),
                h("td", {}, userLabel(j.user_id)),
                h("td", {}, j.template || "workflow"),
                h("td", {}, when(j.started_at)),
                h("td", { class: "live-progress" }, progressBar(j.progress, `progress of ${j.id}`)),
                h("td", {}, cancelButton(j)),
              ),
            ),
          )
        : h("p", {}, "No job is running."),
    );
    queued.replaceChildren(
      waiting.length
        ? table(
            ["Job", "User", "Template", "Position", "Waiting since", "Why", ""],
            waiting.map((j) =>
              h(
                "tr",
                { "data-job": j.id },
                h("td", {}, jobLink(j)),
                h("td", {}, userLabel(j.user_id)),
                h("td", {}, j.template || "workflow"),
                h("td", {}, j.queue_position ?? "—"),
                h("td", {}, when(j.created_at)),
                h("td", {}, j.waiting_reason || "—"),
                h("td", {}, cancelButton(j)),
              ),
            ),
          )
        : h("p", {}, "The queue is empty."),
    );
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      if (!names.size) names = await userNames();
      const jobs = await all("/v1/admin/jobs?status=queued,running");
      if (stopped) return;
      keepFocus(main, () => draw(jobs));
    } catch (err) {
      if (!stopped) perUser.replaceChildren(problemBox(err));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  const unlisten = ctx.onLive((frame) => {
    if (frame.event === "progress") {
      const cell = running.querySelector(`tr[data-job="${CSS.escape(frame.job_id)}"] .live-progress`);
      if (cell) setProgress(cell, frame.data);
    } else if (frame.event === "status") {
      refresh();
    }
  });
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
    unlisten();
  };
}
