"""Hostile request bodies are refused at the edge (422 naming the field, nothing stored), and a row
that holds such content anyway (stored before the edge checked) never makes a view answer 500."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest

from app.db.models import Job
from tests.integration.conftest import Gateway

POISON_CURSOR = "MDAwMS0wMS0wMVQwMDowMDowMCswMTowMHx4"  # "0001-01-01T00:00:00+01:00|x"


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


async def _post_raw(gw: Gateway, path: str, text: str, headers: dict[str, str]) -> Any:
    return await gw.http.post(
        path, content=text.encode(), headers={**headers, "Content-Type": "application/json"}
    )


def _assert_refused(resp: Any, field_prefix: str) -> None:
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    fields = [e.get("field", "") for e in resp.json()["errors"]]
    assert any(f.startswith(field_prefix) for f in fields), fields


async def _job_count(gw: Gateway, headers: dict[str, str]) -> int:
    resp = await gw.http.get("/v1/jobs", headers=headers)
    assert resp.status_code == 200, resp.text
    return len(resp.json()["items"])


# Each body as the literal JSON text a client sends (escapes and NaN stay as written).
BAD_GENERATE_BODIES = [
    pytest.param(
        '{"template":"txt2img","params":{"prompt":"\\ud800"}}', "params.prompt", id="surrogate-param"
    ),
    pytest.param('{"template":"txt2img","params":{"prompt":"a\\u0000b"}}', "params.prompt", id="nul-param"),
    pytest.param(
        '{"template":"txt2img","params":{"prompt":"x"},"metadata":{"k":"\\udfff"}}',
        "metadata.k",
        id="surrogate-metadata",
    ),
    pytest.param(
        '{"template":"txt2img","params":{"prompt":"x"},"metadata":{"\\ud800":1}}',
        "metadata",
        id="surrogate-key",
    ),
    pytest.param(
        '{"template":"txt2img","params":{"prompt":"x"},"metadata":{"n":NaN}}', "metadata.n", id="nan-metadata"
    ),
    pytest.param(
        '{"template":"txt2img","params":{"prompt":"x"},"metadata":{"n":1e999}}',
        "metadata.n",
        id="inf-metadata",
    ),
    pytest.param(
        '{"template":"txt2img","params":{"prompt":"x","seed":18446744073709551616}}',
        "params.seed",
        id="int-over-64-bits",
    ),
    pytest.param(
        json.dumps({"template": "txt2img", "params": {"prompt": "x"}, "metadata": _nested(300)}),
        "metadata",
        id="deep-metadata",
    ),
    pytest.param(
        '{"template":"txt2img","params":{"prompt":"x"},"timeout_seconds":Infinity}',
        "timeout_seconds",
        id="inf-timeout",
    ),
    pytest.param('{"template":"\\ud800"}', "template", id="surrogate-template-name"),
]


@pytest.mark.parametrize(("body", "field"), BAD_GENERATE_BODIES)
async def test_hostile_generate_bodies_are_refused_before_anything_is_stored(
    idle_gateway, body: str, field: str
) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    resp = await _post_raw(gw, "/v1/generate", body, gw.admin)
    _assert_refused(resp, field)
    assert await _job_count(gw, gw.admin) == 0


async def test_a_deep_raw_workflow_is_refused_before_anything_is_stored(idle_gateway) -> None:  # noqa: ANN001
    from tests.integration.test_uploads import png, upload

    gw = await idle_gateway()
    _, headers = await gw.create_user("raw", limits={"allow_raw_workflows": True})
    up = (await upload(gw, png(8, 8, (1, 2, 3)), headers)).json()
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"upload:{up['id']}"}},
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": _nested(600, "x")},
        },
    }
    resp = await gw.http.post("/v1/generate", json={"workflow": workflow}, headers=headers)
    _assert_refused(resp, "workflow")
    assert await _job_count(gw, headers) == 0


async def test_hostile_strings_in_other_bodies_are_refused(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    resp = await _post_raw(gw, "/v1/admin/users", '{"name":"a\\ud800"}', gw.admin)
    _assert_refused(resp, "name")
    resp = await _post_raw(gw, "/v1/admin/users", '{"name":"a\\u0000b"}', gw.admin)
    _assert_refused(resp, "name")
    users = await gw.http.get("/v1/admin/users", headers=gw.admin)
    assert all(u["name"] != "a\ud800" and "\x00" not in u["name"] for u in users.json()["items"])
    doc = {"description": "x", "workflow": _nested(100), "params": {}}
    resp = await gw.http.put("/v1/templates/deep", json=doc, headers=gw.admin)
    _assert_refused(resp, "workflow")
    assert (await gw.http.get("/v1/templates/deep", headers=gw.admin)).status_code == 404


LISTS = [
    "/v1/jobs",
    "/v1/admin/jobs",
    "/v1/admin/users",
    "/v1/templates",
    "/v1/admin/backends",
]


async def test_a_cursor_whose_timestamp_overflows_is_a_422_on_every_list(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    user_id, _ = await gw.create_user("someone")
    job = await gw.generate({"template": "txt2img", "params": {"prompt": "x"}})
    assert job.status_code == 202, job.text
    paths = [*LISTS, f"/v1/admin/users/{user_id}/keys", f"/v1/jobs/{job.json()['id']}/webhook-deliveries"]
    for path in paths:
        resp = await gw.http.get(path, params={"cursor": POISON_CURSOR}, headers=gw.admin)
        _assert_refused(resp, "cursor")


async def _insert_poison_job(gw: Gateway, user_id: str, *, params: dict, meta: dict) -> str:
    """A job row as one stored before the edge checked bodies, written through the DB layer."""
    job_id = str(uuid.uuid4())
    async with gw.state.sessionmaker() as session:
        session.add(
            Job(
                id=job_id,
                user_id=user_id,
                status="queued",
                template="txt2img",
                params=params,
                workflow={"1": {"class_type": "PreviewImage", "inputs": {}}},
                output_nodes=[],
                inputs=[],
                priority=0,
                meta=meta,
                attempts=0,
                cancel_requested=False,
            )
        )
        await session.commit()
    return job_id


def _is_strict_json(text: str) -> bool:
    def refuse(token: str) -> Any:
        raise ValueError(token)

    try:
        json.loads(text, parse_constant=refuse)
    except ValueError:
        return False
    return True


async def test_a_stored_poison_row_never_makes_a_view_fail(idle_gateway, db_url: str) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    user_id, headers = await gw.create_user("poisoned")
    other_id = await _insert_poison_job(gw, user_id, params={"prompt": "fine"}, meta={"deep": _nested(300)})
    sqlite = db_url.startswith("sqlite")
    if sqlite:
        # PostgreSQL itself refuses NaN and lone surrogates in JSON; SQLite keeps whatever it is given.
        meta: dict[str, Any] = {"nan": math.nan, "inf": math.inf, "s": "bad\ud800"}
        params: dict[str, Any] = {"prompt": "\udfffx"}
    else:
        meta, params = {"deep": _nested(280, [])}, {"prompt": "fine"}
    job_id = await _insert_poison_job(gw, user_id, params=params, meta=meta)

    one = await gw.http.get(f"/v1/jobs/{job_id}", headers=headers)
    assert one.status_code == 200, one.text
    assert _is_strict_json(one.text)
    if sqlite:
        assert one.json()["metadata"]["nan"] is None
        assert one.json()["metadata"]["s"].startswith("bad")
        assert one.json()["params"]["prompt"].endswith("x")
    deep = await gw.http.get(f"/v1/jobs/{other_id}", headers=headers)
    assert deep.status_code == 200, deep.text
    for path, who in (("/v1/jobs", headers), ("/v1/admin/jobs", gw.admin)):
        page = await gw.http.get(path, headers=who)
        assert page.status_code == 200, page.text
        assert _is_strict_json(page.text)
        assert {j["id"] for j in page.json()["items"]} >= {job_id, other_id}
    async with gw.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        assert stream.status_code == 200
        data = None
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                break
    assert data is not None and _is_strict_json(data), data
    assert json.loads(data)["id"] == job_id
    canceled = await gw.http.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"


NUL_URLS = [
    ("/v1/jobs/a%00b", "job_id"),
    ("/v1/jobs/a%00b/events", "job_id"),
    ("/v1/templates/a%00b", "name"),
    ("/v1/admin/users/a%00b", "user_id"),
    ("/v1/admin/users/a%00b/keys", "user_id"),
    ("/v1/admin/backends/a%00b", "backend_id"),
    ("/v1/jobs?status=queued%00", "status"),
    ("/v1/admin/jobs?user_id=a%00b", "user_id"),
    ("/v1/admin/jobs?status=a%00b", "status"),
]


async def test_nul_in_a_path_or_query_parameter_is_a_422_naming_it(idle_gateway) -> None:  # noqa: ANN001
    # PostgreSQL cannot compare NUL with a text column: these were 500s there.
    gw = await idle_gateway()
    for url, field in NUL_URLS:
        resp = await gw.http.get(url, headers=gw.admin)
        _assert_refused(resp, field)
        assert [e["field"] for e in resp.json()["errors"]] == [field]


async def test_a_stored_template_with_a_lone_surrogate_never_makes_the_template_views_fail(
    idle_gateway, db_url: str
) -> None:  # noqa: ANN001
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL itself refuses to store a lone surrogate in JSON")
    from app.db.models import Template
    from app.templates import load_builtin

    gw = await idle_gateway()
    document = load_builtin()["txt2img"].to_dict()
    document["description"] = "stored before the edge checked \ud800"
    document["params"]["prompt"]["description"] = "\udfff"
    async with gw.state.sessionmaker() as session:
        session.add(Template(name="poisoned", document=document, builtin=False))
        await session.commit()
    page = await gw.http.get("/v1/templates", params={"limit": 100}, headers=gw.admin)
    assert page.status_code == 200, page.text
    assert "poisoned" in {t["name"] for t in page.json()["items"]}
    one = await gw.http.get("/v1/templates/poisoned", headers=gw.admin)
    assert one.status_code == 200, one.text
    assert one.json()["description"].startswith("stored before")
    job = await gw.generate({"template": "poisoned", "params": {"prompt": "x"}})
    assert job.status_code == 202, job.text
