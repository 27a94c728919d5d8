// Users (admins): every user with limits and usage now; create a user, issue and revoke keys
// (a new key is shown once, as the API gives it once).
import { all, api, post } from "./api.js";
import { badge, h, problemBox, section, table, when } from "./dom.js";

const LIMITS = ["max_queued", "max_running", "rate_per_minute", "jobs_per_day", "max_priority", "allow_raw_workflows"];

export function render(main, ctx) {
  const status = h("div", { "aria-live": "polite" });
  const list = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const name = h("input", { id: "new-user-name", name: "name", required: true, maxlength: "200", autocomplete: "off" });
  const isAdmin = h("input", { id: "new-user-admin", name: "is_admin", type: "checkbox" });
  const create = h(
    "form",
    { id: "create-user", class: "inline-form" },
    h("div", { class: "field" }, h("label", { for: "new-user-name" }, "Name"), name),
    h("div", { class: "field check" }, isAdmin, h("label", { for: "new-user-admin" }, "Admin")),
    h("button", { type: "submit" }, "Create user"),
  );
  main.append(status, section("Create a user", create), section("Users", list));

  // A secret shown once: it is not kept anywhere by the page.
  function showSecret(user, key) {
    status.replaceChildren(
      h(
        "div",
        { class: "secret", role: "status" },
        h("strong", {}, `New key for ${user.name} — copy it now, it is not shown again:`),
        h("pre", { id: "new-key", tabindex: "0" }, key.key),
      ),
    );
  }

  async function keysPanel(user, holder) {
    try {
      const keys = await all(`/v1/admin/users/${encodeURIComponent(user.id)}/keys`, 200);
      holder.replaceChildren(
        keys.length
          ? h(
              "ul",
              { class: "keys" },
              keys.map((k) =>
                h(
                  "li",
                  { "data-key": k.id },
                  h("code", {}, `${k.hint}…`),
                  ` ${k.name || "(no name)"} · created `,
                  when(k.created_at),
                  k.revoked_at
                    ? [" · ", badge("revoked")]
                    : h(
                        "button",
                        {
                          type: "button",
                          class: "danger small",
                          "aria-label": `Revoke key ${k.hint} of ${user.name}`,
                          onclick: async () => {
                            try {
                              await api("DELETE", `/v1/admin/users/${encodeURIComponent(user.id)}/keys/${encodeURIComponent(k.id)}`);
                              keysPanel(user, holder);
                            } catch (err) {
                              status.replaceChildren(problemBox(err));
                            }
                          },
                        },
                        "Revoke",
                      ),
                ),
              ),
            )
          : h("p", { class: "muted" }, "No key."),
      );
    } catch (err) {
      holder.replaceChildren(problemBox(err));
    }
  }

  function userRow(user, usage) {
    const keys = h("div", { class: "keys-holder" });
    const keyName = h("input", { "aria-label": `Name of a new key for ${user.name}`, placeholder: "key name", maxlength: "200", class: "small-input" });
    const issue = h(
      "button",
      {
        type: "button",
        "data-issue": user.name,
        onclick: async () => {
          try {
            const key = await post(`/v1/admin/users/${encodeURIComponent(user.id)}/keys`, keyName.value ? { name: keyName.value } : {});
            showSecret(user, key);
            keyName.value = "";
            keysPanel(user, keys);
          } catch (err) {
            status.replaceChildren(problemBox(err));
          }
        },
      },
      "Issue key",
    );
    const show = h("button", { type: "button", onclick: () => keysPanel(user, keys) }, "Keys");
    return h(
      "tr",
      { "data-user": user.name },
      h("td", {}, h("strong", {}, user.name), h("br"), h("code", { class: "muted" }, user.id)),
      h("td", {}, user.is_admin ? badge("admin") : "user", user.disabled ? [" ", badge("disabled")] : null),
      h("td", {}, h("ul", { class: "limits" }, LIMITS.filter((l) => l in user.limits).map((l) =>
        h("li", { class: l in (user.limit_overrides || {}) ? "override" : null }, `${l}: ${user.limits[l] ?? "∞"}`)))),
      h("td", { class: "usage" }, `${usage.queued} queued · ${usage.running} running`),
      h("td", {}, h("div", { class: "row-actions" }, keyName, issue, show), keys),
    );
  }

  async function load() {
    try {
      const [users, active] = await Promise.all([all("/v1/admin/users"), all("/v1/admin/jobs?status=queued,running")]);
      const usage = new Map();
      for (const j of active) {
        const u = usage.get(j.user_id) || { queued: 0, running: 0 };
        u[j.status] += 1;
        usage.set(j.user_id, u);
      }
      list.replaceChildren(
        table(["User", "Role", "Limits", "Usage now", "Keys"], users.map((u) => userRow(u, usage.get(u.id) || { queued: 0, running: 0 }))),
      );
    } catch (err) {
      list.replaceChildren(problemBox(err));
    }
  }

  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const user = await post("/v1/admin/users", { name: name.value.trim(), is_admin: isAdmin.checked });
      status.replaceChildren(h("p", { role: "status" }, `Created ${user.name}. Issue it a key below.`));
      name.value = "";
      isAdmin.checked = false;
      await load();
    } catch (err) {
      status.replaceChildren(problemBox(err));
    }
  });
  load();
}
