"""Isolation between users (BOLA): another user's object answers exactly like a missing one, on every
route that takes an id; signed URLs open only their own output; admin routes are for admins only."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

from tests.integration.conftest import Gateway

BLUR = {"template": "blur", "params": {"width": 16, "height": 16}}
PLENTY = {"rate_per_minute": 100_000}


def signature_of(url: str) -> str:
    query = parse_qs(urlsplit(url).query)
    return f"expires={query['expires'][0]}&signature={query['signature'][0]}"


async def test_another_users_objects_answer_exactly_like_missing_ones(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    http = gateway.http
    _, alice = await gateway.create_user("alice", limits=PLENTY)
    _, bob = await gateway.create_user("bob", limits=PLENTY)
    _, ops = await gateway.create_user("ops", is_admin=True, limits=PLENTY)
    done = (await gateway.generate(BLUR, headers=alice)).json()["id"]
    mine = (await gateway.generate(BLUR, headers=bob)).json()["id"]
    a_job = await gateway.wait(done, headers=alice)
    b_job = await gateway.wait(mine, headers=bob)
    a_out, b_out = a_job["outputs"][0], b_job["outputs"][0]
    emulator.hang_next()  # Alice's next job runs until canceled: an unfinished job to cancel and follow
    queued = (
        await gateway.generate({"template": "txt2img", "params": {"prompt": "slow"}}, headers=alice)
    ).json()["id"]

    ghost = str(uuid.uuid4())
    routes = [
        ("GET", "/v1/jobs/{job}", {"job": done}),
        ("POST", "/v1/jobs/{job}/cancel", {"job": queued}),
        ("GET", "/v1/jobs/{job}/events", {"job": queued}),
        ("GET", "/v1/jobs/{job}/outputs/{out}", {"job": done, "out": a_out["id"]}),
        # Ids mixed across users: each half is real, the pair is not Bob's.
        ("GET", "/v1/jobs/{job}/outputs/{out}", {"job": mine, "out": a_out["id"]}),
        ("GET", "/v1/jobs/{job}/outputs/{out}", {"job": done, "out": b_out["id"]}),
    ]
    for caller in (bob, ops):  # an admin user too: admins see others' jobs at /v1/admin/jobs only
        for method, template, ids in routes:
            real = template.format(**ids)
            missing = template.format(**{k: ghost for k in ids})
            got = await http.request(method, real, headers=caller)
            expected = await http.request(method, missing, headers=caller)
            assert got.status_code == expected.status_code == 404, (method, real, got.text)
            assert (
                got.headers["content-type"] == expected.headers["content-type"] == "application/problem+json"
            )
            # The same body, but for the id it names.
            body = got.json()
            for _key, value in ids.items():
                body["detail"] = body["detail"].replace(value, ghost)
            assert body == expected.json(), (method, real)
    # Bob's attempts changed nothing; Alice still has her jobs, Bob sees none of them.
    assert (await gateway.job(queued, headers=alice))["status"] in ("queued", "running")
    assert [j["id"] for j in (await http.get("/v1/jobs", headers=bob)).json()["items"]] == [mine]
    assert (await http.post(f"/v1/jobs/{queued}/cancel", headers=alice)).status_code == 200


async def test_a_signed_url_opens_its_own_output_and_nothing_else(gateway: Gateway) -> None:
    http = gateway.http
    _, alice = await gateway.create_user("alice", limits=PLENTY)
    _, bob = await gateway.create_user("bob", limits=PLENTY)
    a1 = await gateway.wait((await gateway.generate(BLUR, headers=alice)).json()["id"], headers=alice)
    a2 = await gateway.wait((await gateway.generate(BLUR, headers=alice)).json()["id"], headers=alice)
    b1 = await gateway.wait((await gateway.generate(BLUR, headers=bob)).json()["id"], headers=bob)
    out_a1, out_a2, out_b1 = a1["outputs"][0], a2["outputs"][0], b1["outputs"][0]
    assert (await http.get(out_a1["url"])).status_code == 200

    sig = signature_of(out_a1["url"])
    for job, out in [(a2, out_a2), (b1, out_b1), (a1, out_a2), (a2, out_a1)]:
        path = f"/v1/jobs/{job['id']}/outputs/{out['id']}?{sig}"
        # Without a key the borrowed signature is worth nothing (401, as with no signature at all)...
        assert (await http.get(path)).status_code == 401, path
        # ...and with Bob's key it does not open Alice's output either.
        if job is not b1:
            assert (await http.get(path, headers=bob)).status_code == 404, path
    # Bob's own output with his own key: fine; a signed URL of Bob's output works for anyone.
    assert (await http.get(f"/v1/jobs/{b1['id']}/outputs/{out_b1['id']}", headers=bob)).status_code == 200
    assert (await http.get(out_b1["url"])).status_code == 200


async def test_admin_routes_are_403_for_non_admins_whatever_the_ids(idle_gateway) -> None:  # noqa: ANN001
    gateway = await idle_gateway()
    http = gateway.http
    bob_id, bob = await gateway.create_user("bob", limits=PLENTY)
    carol_id, _ = await gateway.create_user("carol")
    keys = (await http.get(f"/v1/admin/users/{carol_id}/keys", headers=gateway.admin)).json()["items"]
    ghost = str(uuid.uuid4())
    for user_id, key_id in ((carol_id, keys[0]["id"]), (bob_id, ghost), (ghost, ghost)):
        for method, path, body in [
            ("GET", "/v1/admin/users", None),
            ("POST", "/v1/admin/users", {"name": "mallory", "is_admin": True}),
            ("GET", f"/v1/admin/users/{user_id}", None),
            ("PATCH", f"/v1/admin/users/{user_id}", {"limits": {"max_queued": 1_000_000}}),
            ("POST", f"/v1/admin/users/{user_id}/keys", {}),
            ("GET", f"/v1/admin/users/{user_id}/keys", None),
            ("DELETE", f"/v1/admin/users/{user_id}/keys/{key_id}", None),
            ("GET", "/v1/admin/jobs", None),
            ("GET", f"/v1/admin/jobs?user_id={user_id}", None),
        ]:
            resp = await http.request(method, path, json=body, headers=bob)
            assert resp.status_code == 403, (method, path, resp.text)
            assert resp.headers["content-type"] == "application/problem+json"
    # Nothing changed: no new user, Bob's limits and Carol's key as they were.
    users = (await http.get("/v1/admin/users", headers=gateway.admin)).json()["items"]
    assert sorted(u["name"] for u in users) == ["admin", "bob", "carol"]
    assert next(u for u in users if u["id"] == bob_id)["limit_overrides"] == PLENTY
    assert (await http.get(f"/v1/admin/users/{carol_id}/keys", headers=gateway.admin)).json()["items"] == keys
    # Without any key: 401, before anything else.
    assert (await http.get("/v1/admin/users")).status_code == 401
