"""The console, as an operator and an app developer use it, in headless Chromium against the real
app with two emulated backends (fixtures in conftest.py). Screenshots of each page go under the
module's temporary directory."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.integration.conftest import ADMIN_KEY

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# A 4xx the test provokes on purpose is logged by the browser as a failed resource load; that is
# the network's report, not an error of the page.
RESOURCE_4XX = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")


class Console:
    def __init__(self, page: Any, stack: Stack) -> None:
        self.page = page
        self.stack = stack
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", lambda req: self.urls.append(req.url))

    def login(self, key: str) -> None:
        """With the keyboard alone: the key field has focus, Enter submits."""
        self.page.goto(f"{self.stack.base_url}/console")
        self.page.wait_for_selector("#api-key:focus")
        self.page.keyboard.type(key)
        self.page.keyboard.press("Enter")
        self.page.wait_for_selector("#nav:not([hidden])")

    def go(self, hash_path: str) -> None:
        self.page.evaluate("(h) => { location.hash = h; }", hash_path)

    def shot(self, name: str, *, full_page: bool = False) -> None:
        self.page.screenshot(path=str(self.stack.tmp / f"console-{name}.png"), full_page=full_page)

    def image_loaded(self, selector: str) -> None:
        self.page.wait_for_function(
            "(sel) => { const img = document.querySelector(sel); return img && img.complete && img.naturalWidth > 0; }",
            arg=selector,
        )


@pytest.fixture
def console(browser: Any, stack: Stack) -> Iterator[Console]:
    context = browser.new_context(viewport=DESKTOP)
    c = Console(context.new_page(), stack)
    yield c
    context.close()
    assert [e for e in c.errors if not RESOURCE_4XX.search(e)] == [], c.errors
    # The key travels in headers and the WebSocket's first frame only.
    assert not [u for u in c.urls if ADMIN_KEY in u]


def submit(stack: Stack, body: dict, headers: dict | None = None) -> dict:
    resp = stack.admin.post("/v1/generate", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait_terminal(stack: Stack, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = stack.admin.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_pool_shows_both_backends_and_drain_marks_one(console: Console, stack: Stack) -> None:
    console.login(ADMIN_KEY)
    page = console.page
    # An admin lands on the pool; both emulated backends are up.
    page.wait_for_function("() => document.querySelectorAll('.backend[data-health=\"up\"]').length === 2")
    assert page.locator(".backend", has_text="node classes").count() == 2
    first = stack.backends[0]
    card = page.locator(f'.backend[data-backend="{first}"]')
    try:
        card.get_by_role("button", name="Drain").click()
        page.wait_for_selector(f'.backend[data-backend="{first}"][data-state="draining"]')
        assert card.locator(".badge-draining").inner_text() == "draining"
        assert (
            next(b for b in stack.admin.get("/v1/admin/backends").json()["items"] if b["url"] == first)[
                "state"
            ]
            == "draining"
        )
        console.shot("pool")
        card.get_by_role("button", name="Resume").click()
        page.wait_for_selector(f'.backend[data-backend="{first}"][data-state="active"]')
        # Drained elsewhere (through the API): the page sees it by itself.
        second = next(
            b for b in stack.admin.get("/v1/admin/backends").json()["items"] if b["url"] == stack.backends[1]
        )
        stack.admin.post(f"/v1/admin/backends/{second['id']}/drain")
        page.wait_for_selector(f'.backend[data-backend="{second["url"]}"][data-state="draining"]')
    finally:
        for b in stack.admin.get("/v1/admin/backends").json()["items"]:
            stack.admin.post(f"/v1/admin/backends/{b['id']}/resume")


def test_playground_runs_a_template_and_the_job_page_shows_it(console: Console, stack: Stack) -> None:
    console.login(ADMIN_KEY)
    page = console.page
    console.go("#/playground")
    page.select_option("#template", "txt2img")
    page.fill("#param-prompt", "a lighthouse at dusk")
    page.fill("#param-steps", "12")
    # The curl line carries the non-default param and a placeholder, never the key.
    curl = page.inner_text("#curl")
    assert '"steps":12' in curl and "$GATEWAY_API_KEY" in curl and ADMIN_KEY not in curl
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector('#run-status[data-final="succeeded"]', timeout=30_000)
    assert page.inner_text("#run-progress .progress-text") == "12 / 12"
    console.image_loaded("#run-outputs img")
    job_id = page.inner_text("#run-link")
    job = stack.admin.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["params"]["steps"] == 12
    console.shot("playground")

    # The jobs list shows it with a WebP thumbnail that loads.
    console.go("#/jobs")
    row = f'tr[data-job="{job_id}"]'
    page.wait_for_selector(row)
    assert "format=webp" in page.get_attribute(f"{row} img.thumb", "src")
    console.image_loaded(f"{row} img.thumb")
    console.shot("jobs")

    # Its page: params, outputs, and the event timeline from the first event to the last.
    page.click(f"{row} a")
    page.wait_for_selector("#job-status .badge-succeeded")
    console.image_loaded(".outputs img")
    assert '"steps": 12' in page.inner_text("pre.json")
    assert "null" not in page.inner_text("main").split()
    page.wait_for_selector('.timeline li[data-event="output"]')
    timeline = page.inner_text(".timeline")
    assert "running" in timeline and "12 / 12" in timeline and "succeeded" in timeline
    console.shot("job", full_page=True)


def test_an_image_param_is_a_file_picker_that_uploads(console: Console, stack: Stack) -> None:
    from PIL import Image

    picture = stack.tmp / "input.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(picture)
    console.login(ADMIN_KEY)
    page = console.page
    console.go("#/playground")
    page.select_option("#template", "img2img")
    page.set_input_files("#param-image-file", str(picture))
    page.wait_for_function("() => document.querySelector('#param-image').value !== ''")
    upload_id = page.input_value("#param-image")
    assert "64×48" in page.inner_text(".upload-note")
    page.fill("#param-prompt", "the same, in blue")
    page.fill("#param-steps", "3")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector('#run-status[data-final="succeeded"]', timeout=30_000)
    console.image_loaded("#run-outputs img")
    job = stack.admin.get(f"/v1/jobs/{page.inner_text('#run-link')}").json()
    assert job["params"]["image"] == upload_id


def test_job_page_lists_webhook_deliveries_and_redelivers(console: Console, stack: Stack) -> None:
    job = submit(
        stack, {"template": "blur", "params": {"width": 16}, "webhook": {"url": "http://127.0.0.1:9/hook"}}
    )
    wait_terminal(stack, job["id"])
    console.login(ADMIN_KEY)
    page = console.page
    console.go(f"#/jobs/{job['id']}")
    row = ".deliveries tbody tr"
    page.wait_for_selector(f"{row} td.attempts:text('1')", timeout=20_000)
    assert "127.0.0.1:9" in page.inner_text(row)
    page.locator(row).get_by_role("button", name="Redeliver").click()
    # The next attempt is made at once (the schedule would wait 5 s): the list shows it.
    page.wait_for_selector(f"{row} td.attempts:text('2')", timeout=20_000)


def test_queue_shows_live_progress_and_cancels_a_running_job(console: Console, stack: Stack) -> None:
    # Another user's job: its progress reaches the admin's page over /v1/ws?all=true, and the
    # admin's cancel goes through /v1/admin/jobs/{id}/cancel.
    user = stack.admin.post("/v1/admin/users", json={"name": "queue-owner"}).json()
    key = stack.admin.post(f"/v1/admin/users/{user['id']}/keys", json={}).json()["key"]
    job = submit(
        stack,
        {"template": "txt2img", "params": {"prompt": "slow", "steps": 100}},
        {"Authorization": f"Bearer {key}"},
    )
    page = console.page
    frames: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(_frame(payload))))
    console.login(ADMIN_KEY)
    console.go("#/queue")
    row = f'tr[data-job="{job["id"]}"]'
    page.wait_for_selector(f"{row} .live-progress", timeout=20_000)
    page.wait_for_function(
        "(sel) => { const p = document.querySelector(sel); return p && p.value > 1; }", arg=f"{row} progress"
    )
    # The bar may have moved from the page's own refresh of the list first: the socket's progress
    # frames must arrive too (within a few seconds; the job runs for longer than that).
    for _ in range(100):
        if any(f.get("event") == "progress" and f.get("job_id") == job["id"] for f in frames):
            break
        page.wait_for_timeout(100)
    assert any(f.get("event") == "progress" and f.get("job_id") == job["id"] for f in frames), (
        "no live progress frame"
    )
    assert "queue-owner" in page.inner_text("section:has(h2:text('Per user'))")
    console.shot("queue")
    page.locator(row).get_by_role("button", name=re.compile("Cancel")).click()
    page.wait_for_selector(row, state="detached")
    owner = stack.admin.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"}).json()
    assert owner["status"] == "canceled"


def _frame(payload: str | bytes) -> dict:
    try:
        frame = json.loads(payload)
    except ValueError:
        return {}
    return frame if isinstance(frame, dict) else {}


def test_queue_shows_the_oldest_waiting_job(console: Console, stack: Stack) -> None:
    pool = stack.admin.get("/v1/admin/backends").json()["items"]
    try:
        # Every backend drained: jobs wait in the gateway's queue.
        for b in pool:
            stack.admin.post(f"/v1/admin/backends/{b['id']}/drain")
        older = submit(stack, {"template": "blur", "params": {"width": 16}})
        newer = submit(stack, {"template": "blur", "params": {"width": 24}})
        console.login(ADMIN_KEY)
        page = console.page
        console.go("#/queue")
        page.wait_for_selector(f'tr[data-job="{newer["id"]}"]')
        oldest = page.inner_text(".oldest")
        assert older["id"][:8] in oldest and newer["id"][:8] not in oldest
        assert page.inner_text(".waiting-reason")
    finally:
        for b in pool:
            stack.admin.post(f"/v1/admin/backends/{b['id']}/resume")
    for job in (older, newer):
        assert wait_terminal(stack, job["id"])["status"] == "succeeded"


def test_admin_creates_a_user_and_a_key_and_that_user_sees_only_its_jobs(
    browser: Any, console: Console, stack: Stack
) -> None:
    admins_job = submit(stack, {"template": "blur", "params": {"width": 64, "height": 64}})
    console.login(ADMIN_KEY)
    page = console.page
    console.go("#/users")
    page.fill("#new-user-name", "alice")
    page.keyboard.press("Enter")
    page.wait_for_selector('tr[data-user="alice"]')
    page.fill('tr[data-user="alice"] input[placeholder="key name"]', "laptop")
    page.click('button[data-issue="alice"]')
    key = page.inner_text("#new-key").strip()
    assert key and key != ADMIN_KEY
    page.wait_for_selector('tr[data-user="alice"] .keys li')
    console.shot("users")

    alices_job = submit(
        stack, {"template": "blur", "params": {"width": 32, "height": 32}}, {"Authorization": f"Bearer {key}"}
    )
    alice = Console(browser.new_context(viewport=DESKTOP).new_page(), stack)
    try:
        alice.login(key)
        # Not an admin: no admin pages, and the jobs list holds alice's job only.
        assert alice.page.inner_text("#nav").split() == ["Jobs", "Playground"]
        alice.page.wait_for_selector(f'tr[data-job="{alices_job["id"]}"]')
        ids = alice.page.eval_on_selector_all("tr[data-job]", "rows => rows.map(r => r.dataset.job)")
        assert ids == [alices_job["id"]] and admins_job["id"] not in ids
        # Another user's job by its link: the API's 404, shown as a problem.
        alice.go(f"#/jobs/{admins_job['id']}")
        alice.page.wait_for_selector(".problem")
        assert "Not found" in alice.page.inner_text(".problem-title")
        assert admins_job["id"] in alice.page.inner_text(".problem-detail")
    finally:
        alice.page.context.close()
    assert [e for e in alice.errors if not RESOURCE_4XX.search(e)] == []

    # The admin sees alice's job among everyone's, by her name, and opens its page: the job, its
    # event timeline and its deliveries through /v1/admin/jobs/{id} (/v1/jobs/{id} is the owner's).
    console.go("#/jobs")
    row = f'tr[data-job="{alices_job["id"]}"]'
    page.wait_for_selector(row)
    assert page.inner_text(f"{row} .job-user") == "alice"
    page.click(f"{row} a")
    page.wait_for_selector("#job-status .badge")
    assert '"width": 32' in page.inner_text("pre.json")
    page.wait_for_selector('.timeline li[data-event="output"]', timeout=20_000)
    assert "succeeded" in page.inner_text(".timeline")
    assert "No webhook" in page.inner_text(".deliveries")

    # Revoking the key from the users page: it no longer opens anything.
    console.go("#/users")
    page.locator('tr[data-user="alice"]').get_by_role("button", name="Keys").click()
    page.locator('tr[data-user="alice"] .keys li').get_by_role("button", name=re.compile("Revoke")).click()
    page.wait_for_selector('tr[data-user="alice"] .keys .badge-revoked')
    assert stack.admin.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_the_console_is_usable_with_the_keyboard(console: Console) -> None:
    console.login(ADMIN_KEY)
    page = console.page
    # A reload keeps the session (the key is in this tab's sessionStorage); the first Tab is the skip link.
    page.reload()
    page.wait_for_selector(".backend")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    assert page.evaluate("() => location.hash") == "#/pool"
    page.evaluate("() => document.activeElement.blur()")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.page") == "playground":
            break
    page.keyboard.press("Enter")
    page.wait_for_selector("#param-prompt")
    # Submitting the form with Enter in a field; a missing required param is refused in place.
    page.focus("#param-width")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "param-prompt"
    assert page.locator("#run-link").count() == 0


def test_a_refused_key_is_shown_as_the_problem(console: Console, stack: Stack) -> None:
    problem = stack.admin.get("/v1/me", headers={"Authorization": "Bearer cgw_not_a_key"}).json()
    console.page.goto(f"{stack.base_url}/console")
    console.page.fill("#api-key", "cgw_not_a_key")
    console.page.click("button[type=submit]")
    console.page.wait_for_selector(".problem")
    assert console.page.inner_text(".problem-title") == problem["title"]
    assert console.page.inner_text(".problem-detail") == problem["detail"]
    # A refused key is not kept.
    assert console.page.evaluate("() => sessionStorage.length") == 0


def test_console_fits_a_phone(browser: Any, stack: Stack) -> None:
    page = browser.new_context(viewport=PHONE).new_page()
    c = Console(page, stack)
    try:
        c.login(ADMIN_KEY)
        for name, ready in (
            ("pool", ".backend"),
            ("playground", "#param-prompt"),
            ("jobs", "table, .card p"),
            ("users", "tr[data-user]"),
        ):
            c.go(f"#/{name}")
            page.wait_for_selector(ready)
            # Wide tables scroll inside their box; the page itself never scrolls sideways.
            assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), name
        c.go("#/playground")
        page.wait_for_selector("#param-prompt")
        c.shot("phone-playground")
    finally:
        page.context.close()
    assert [e for e in c.errors if not RESOURCE_4XX.search(e)] == []


def test_the_page_is_served_with_its_security_headers(stack: Stack) -> None:
    resp = stack.admin.get("/console")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["x-frame-options"] == "DENY"
    assert stack.admin.get("/console/main.js").headers["content-type"].startswith("text/javascript")
    missing = stack.admin.get("/console/../app/config.py")
    assert missing.status_code == 404
    assert stack.admin.get("/console/nope.js").headers["content-type"] == "application/problem+json"
