"""The admin API: users, keys and limits; every user's jobs. Revocation and disabling bite on the next request."""

from __future__ import annotations

import asyncio
import re

from app.domain.users import BOOTSTRAP_ADMIN_ID
from tests.integration.conftest import Gateway

BLUR = {"template": "blur", "params": {"width": 16, "height": 16}}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_users_are_created_read_listed_updated_and_validated(idle_gateway) -> None:  # noqa: ANN001
    gateway = await idle_gateway()
    http, admin = gateway.http, gateway.admin
    resp = await http.post(
        "/v1/admin/users", json={"name": "app-1", "limits": {"max_queued": 7, "weight": 3}}, headers=admin
    )
    assert resp.status_code == 201, resp.text
    user = resp.json()
    assert set(user) >= {"id", "name", "is_admin", "disabled", "limits", "created_at"}
    assert (user["name"], user["is_admin"], user["disabled"]) == ("app-1", False, False)
    assert RFC3339.match(user["created_at"])
    # `limits` is what applies: the user's own values, the defaults for the rest.
    assert user["limits"]["max_queued"] == 7 and user["limits"]["weight"] == 3
    assert user["limits"]["rate_per_minute"] == 120 and user["limits"]["allow_raw_workflows"] is False
    assert user["limit_overrides"] == {"max_queued": 7, "weight": 3}
    assert (await http.get(f"/v1/admin/users/{user['id']}", headers=admin)).json() == user

    second = (
        await http.post("/v1/admin/users", json={"name": "app-2", "is_admin": True}, headers=admin)
    ).json()
    third = (await http.post("/v1/admin/users", json={"name": "app-3"}, headers=admin)).json()
    assert second["is_admin"] is True and second["limit_overrides"] == {}
    seen, cursor = [], None
    while True:
        page = (
            await http.get("/v1/admin/users?limit=2" + (f"&cursor={cursor}" if cursor else ""), headers=admin)
        ).json()
        assert len(page["items"]) <= 2
        seen += [u["id"] for u in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    # Newest first; the bootstrap admin (created at start) comes last.
    assert seen == [third["id"], second["id"], user["id"], BOOTSTRAP_ADMIN_ID]

    # PATCH merges limits; a member set to null goes back to the default; name and the rest stay.
    patched = await http.patch(
        f"/v1/admin/users/{user['id']}",
        json={"name": "app-one", "limits": {"max_queued": None, "jobs_per_day": 9}},
        headers=admin,
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["name"] == "app-one" and body["limit_overrides"] == {"weight": 3, "jobs_per_day": 9}
    assert body["limits"]["max_queued"] == 100 and body["limits"]["jobs_per_day"] == 9
    assert (await http.get(f"/v1/admin/users/{user['id']}", headers=admin)).json() == body

    # Bad bodies: 422 naming the field, and nothing created or changed.
    cases = [
        ({"name": "x", "limits": {"max_queued": "10"}}, "limits.max_queued"),
        ({"name": "x", "limits": {"max_queued": 0}}, "limits.max_queued"),
        ({"name": "x", "limits": {"rate_per_minute": 1.5}}, "limits.rate_per_minute"),
        ({"name": "x", "limits": {"weight": 101}}, "limits.weight"),
        ({"name": "x", "limits": {"allow_raw_workflows": "yes"}}, "limits.allow_raw_workflows"),
        ({"name": "x", "limits": {"max_gpus": 2}}, "limits.max_gpus"),
        ({"name": ""}, "name"),
        ({"name": "x", "is_admin": "true"}, "is_admin"),
        ({"name": "x", "role": "root"}, "role"),
    ]
    for body, field in cases:
        resp = await http.post("/v1/admin/users", json=body, headers=admin)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert field in {e["field"] for e in resp.json()["errors"]}, (body, resp.json())
    listed = (await http.get("/v1/admin/users?limit=100", headers=admin)).json()["items"]
    assert len(listed) == 4
    bad_patch = await http.patch(
        f"/v1/admin/users/{third['id']}", json={"limits": {"weight": 0}}, headers=admin
    )
    assert bad_patch.status_code == 422 and bad_patch.json()["errors"][0]["field"] == "limits.weight"
    assert (await http.get(f"/v1/admin/users/{third['id']}", headers=admin)).json() == third

    # Unknown ids: 404.
    user_id = third["id"]
    ghost = "00000000-0000-0000-0000-00000000beef"
    for method, path, body in [
        ("GET", f"/v1/admin/users/{ghost}", None),
        ("PATCH", f"/v1/admin/users/{ghost}", {"name": "x"}),
        ("POST", f"/v1/admin/users/{ghost}/keys", {}),
        ("GET", f"/v1/admin/users/{ghost}/keys", None),
        ("DELETE", f"/v1/admin/users/{ghost}/keys/{ghost}", None),
        ("DELETE", f"/v1/admin/users/{user_id}/keys/{ghost}", None),
    ]:
        resp = await http.request(method, path, json=body, headers=admin)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"


async def test_revoked_keys_and_disabled_users_are_refused_on_their_next_request(idle_gateway) -> None:  # noqa: ANN001
    gateway = await idle_gateway()
    http, admin = gateway.http, gateway.admin
    user_id, first = await gateway.create_user("keyed")
    created = await http.post(f"/v1/admin/users/{user_id}/keys", json={"name": "ci"}, headers=admin)
    assert created.status_code == 201, created.text
    key = created.json()
    assert set(key) == {"id", "name", "key", "created_at"} and key["name"] == "ci"
    assert key["key"].startswith("cgw_") and len(key["key"]) > 40
    second = {"Authorization": f"Bearer {key['key']}"}
    unnamed = await http.post(f"/v1/admin/users/{user_id}/keys", headers=admin)  # the body is optional
    assert unnamed.status_code == 201 and unnamed.json()["name"] is None

    listing = await http.get(f"/v1/admin/users/{user_id}/keys", headers=admin)
    items = listing.json()["items"]
    assert [k["id"] for k in items][1] == key["id"] and len(items) == 3  # newest first
    assert key["key"] not in listing.text  # no secret, and no hash either
    listed = items[1]
    assert set(listed) == {"id", "name", "hint", "created_at", "revoked_at"}
    assert key["key"].startswith(listed["hint"]) and listed["revoked_at"] is None

    assert (await http.get("/v1/me", headers=second)).status_code == 200
    revoke = await http.delete(f"/v1/admin/users/{user_id}/keys/{key['id']}", headers=admin)
    assert revoke.status_code == 204 and revoke.content == b""
    refused = await http.get("/v1/me", headers=second)
    assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
    assert (await http.post("/v1/generate", json=BLUR, headers=second)).status_code == 401
    # The user's other key still works; the listing shows when the key was revoked.
    assert (await http.get("/v1/me", headers=first)).status_code == 200
    again = (await http.get(f"/v1/admin/users/{user_id}/keys", headers=admin)).json()["items"]
    assert RFC3339.match(next(k for k in again if k["id"] == key["id"])["revoked_at"])
    # Revoking again is harmless; a key named under another user is not found there.
    assert (
        await http.delete(f"/v1/admin/users/{user_id}/keys/{key['id']}", headers=admin)
    ).status_code == 204
    other_id, _ = await gateway.create_user("other")
    assert (
        await http.delete(f"/v1/admin/users/{other_id}/keys/{key['id']}", headers=admin)
    ).status_code == 404

    # A disabled user's keys are refused from their next request, until it is enabled again.
    user = first
    assert (await http.get("/v1/jobs", headers=user)).status_code == 200
    resp = await http.patch(f"/v1/admin/users/{user_id}", json={"disabled": True}, headers=admin)
    assert resp.status_code == 200 and resp.json()["disabled"] is True
    assert (await http.get("/v1/jobs", headers=user)).status_code == 401
    assert (await http.post("/v1/generate", json=BLUR, headers=user)).status_code == 401
    assert (
        await http.patch(f"/v1/admin/users/{user_id}", json={"disabled": False}, headers=admin)
    ).status_code == 200
    assert (await http.get("/v1/jobs", headers=user)).status_code == 200

    # The bootstrap admin cannot be disabled.
    resp = await http.patch(f"/v1/admin/users/{BOOTSTRAP_ADMIN_ID}", json={"disabled": True}, headers=admin)
    assert resp.status_code == 409 and resp.headers["content-type"] == "application/problem+json"
    assert (await http.get(f"/v1/admin/users/{BOOTSTRAP_ADMIN_ID}", headers=admin)).json()[
        "disabled"
    ] is False
    # Not even by another admin.
    _, other_admin = await gateway.create_user("ops", is_admin=True)
    again = await http.patch(
        f"/v1/admin/users/{BOOTSTRAP_ADMIN_ID}", json={"disabled": True}, headers=other_admin
    )
    assert again.status_code == 409
    assert (await http.get("/v1/me", headers=admin)).status_code == 200


async def test_admin_jobs_lists_every_users_jobs_with_filters_and_pages(gateway: Gateway) -> None:
    http, admin = gateway.http, gateway.admin
    alice_id, alice = await gateway.create_user("alice")
    bob_id, bob = await gateway.create_user("bob")
    _, ops = await gateway.create_user("ops", is_admin=True)  # an admin user, not the bootstrap key
    a1 = (await gateway.generate(BLUR, headers=alice)).json()["id"]
    b1 = (await gateway.generate(BLUR, headers=bob)).json()["id"]
    a2 = (await gateway.generate(BLUR, headers=alice)).json()["id"]
    for job_id, headers in ((a1, alice), (b1, bob), (a2, alice)):
        await gateway.wait(job_id, headers=headers)
    canceled = (
        await gateway.generate({"template": "txt2img", "params": {"prompt": "x"}}, headers=bob)
    ).json()["id"]
    await http.post(f"/v1/jobs/{canceled}/cancel", headers=bob)

    everything = (await http.get("/v1/admin/jobs", headers=ops)).json()
    assert [(j["id"], j["user_id"]) for j in everything["items"]] == [
        (canceled, bob_id),
        (a2, alice_id),
        (b1, bob_id),
        (a1, alice_id),
    ]
    assert everything["next_cursor"] is None
    assert everything["items"][1]["outputs"][0]["url"].startswith(f"/v1/jobs/{a2}/outputs/")
    only_alice = (await http.get(f"/v1/admin/jobs?user_id={alice_id}", headers=admin)).json()["items"]
    assert [j["id"] for j in only_alice] == [a2, a1]
    bobs_done = (await http.get(f"/v1/admin/jobs?user_id={bob_id}&status=succeeded", headers=admin)).json()[
        "items"
    ]
    assert [j["id"] for j in bobs_done] == [b1]
    page = (await http.get("/v1/admin/jobs?limit=3", headers=admin)).json()
    rest = (await http.get(f"/v1/admin/jobs?limit=3&cursor={page['next_cursor']}", headers=admin)).json()
    assert [j["id"] for j in page["items"] + rest["items"]] == [j["id"] for j in everything["items"]]
    assert (await http.get("/v1/admin/jobs?limit=101", headers=admin)).status_code == 422
    assert (await http.get("/v1/admin/jobs?status=lost", headers=admin)).status_code == 422


async def test_a_running_cap_raised_by_an_admin_lets_the_users_next_job_start_at_once(
    gateway: Gateway,
) -> None:
    """The dispatcher keeps users' limits between rounds; an admin's change reaches it on commit."""
    user_id, alice = await gateway.create_user("alice", limits={"max_running": 1})
    slow = {"template": "txt2img", "params": {"prompt": "a", "steps": 100}}
    first, second = [(await gateway.generate(slow, headers=alice)).json()["id"] for _ in range(2)]
    await gateway.wait(first, {"running"}, headers=alice)
    await asyncio.sleep(0.2)  # rounds go by: the cap holds the second job back
    assert (await gateway.job(second, alice))["status"] == "queued"
    resp = await gateway.http.patch(
        f"/v1/admin/users/{user_id}", json={"limits": {"max_running": 2}}, headers=gateway.admin
    )
    assert resp.status_code == 200
    # The second starts while the first still runs: the cap of 1 no longer holds it back.
    ended = await gateway.wait(first, headers=alice)
    started = await gateway.wait(second, {"running", "succeeded"}, headers=alice)
    assert started["started_at"] < ended["finished_at"]
