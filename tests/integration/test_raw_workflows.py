"""Raw workflows: who may send them, the operator's node lists, server files, size."""

from __future__ import annotations

from tests.integration.conftest import Gateway

BLUR_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "raw"}},
}


def with_node(node_id: str, class_type: str, inputs: dict) -> dict:
    return {**BLUR_GRAPH, node_id: {"class_type": class_type, "inputs": inputs}}


async def job_count(gw: Gateway) -> int:
    return len((await gw.http.get("/v1/admin/jobs?limit=100", headers=gw.admin)).json()["items"])


def refused_nodes(resp) -> set[tuple[str, str]]:  # noqa: ANN001
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    return {(e["node_id"], e["class_type"]) for e in resp.json()["errors"]}


async def test_raw_workflows_need_permission_and_refuse_denied_nodes_and_server_files(
    gateway: Gateway,
) -> None:
    user_id, user = await gateway.create_user("templated")
    refused = await gateway.generate({"workflow": BLUR_GRAPH}, headers=user)
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
    assert await job_count(gateway) == 0
    # Allowed by an admin, from the next request on.
    await gateway.http.patch(
        f"/v1/admin/users/{user_id}", json={"limits": {"allow_raw_workflows": True}}, headers=gateway.admin
    )
    accepted = await gateway.generate({"workflow": BLUR_GRAPH}, headers=user)
    assert accepted.status_code == 202, accepted.text
    final = await gateway.wait(accepted.json()["id"], headers=user)
    assert final["status"] == "succeeded" and final["template"] is None and len(final["outputs"]) == 1

    # The default deny list, and inputs naming server files: 422 naming each node, nothing stored.
    cases = [
        # Reads any image in ComfyUI's output folder: other users' results.
        (
            with_node("9", "LoadImageOutput", {"image": "ComfyUI_00001_.png [output]"}),
            {("9", "LoadImageOutput")},
        ),
        # Writes model weights under a free-text prefix.
        (
            with_node(
                "7",
                "CheckpointSave",
                {"model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "filename_prefix": "../x"},
            ),
            {("7", "CheckpointSave")},
        ),
        (with_node("8", "Preview3D", {"model_file": "/etc/passwd"}), {("8", "Preview3D")}),
        # A plain file name in an upload input: not a file the gateway staged for this job.
        (with_node("5", "LoadImage", {"image": "example.png"}), {("5", "LoadImage")}),
        (
            with_node("6", "LoadImageMask", {"image": "harness_upload.png", "channel": "alpha"}),
            {("6", "LoadImageMask")},
        ),
        # Two at once: both named.
        (
            {
                **with_node("5", "LoadImage", {"image": "a.png"}),
                "6": {"class_type": "LoadLatent", "inputs": {"latent": "x.latent"}},
            },
            {("5", "LoadImage"), ("6", "LoadLatent")},
        ),
    ]
    for workflow, expected in cases:
        resp = await gateway.generate({"workflow": workflow}, headers=user)
        assert refused_nodes(resp) == expected, resp.json()
        for node_id, class_type in expected:
            assert node_id in resp.json()["detail"] and class_type in resp.json()["detail"]
    upload = await gateway.generate(
        {"workflow": with_node("5", "LoadImage", {"image": "example.png"})}, headers=user
    )
    assert upload.json()["errors"][0]["field"] == "workflow.5.inputs.image"
    # The deny list binds admins too: it protects the servers, not the users.
    assert refused_nodes(await gateway.generate({"workflow": cases[0][0]})) == {("9", "LoadImageOutput")}
    assert await job_count(gateway) == 1


async def test_operator_allow_and_deny_lists_and_the_node_count_bound(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(
        make_settings(
            comfyui_urls=[emulator.base_url],
            raw_workflow_deny_nodes=["ImageBlur"],
            raw_workflow_allow_nodes=["EmptyImage", "ImageBlur", "SaveImage", "ImageInvert"],
            max_workflow_nodes=4,
        )
    )
    _, user = await gw.create_user("raw", limits={"allow_raw_workflows": True})
    # Denied although allowed: deny wins.
    assert refused_nodes(await gw.generate({"workflow": BLUR_GRAPH}, headers=user)) == {("2", "ImageBlur")}
    # Not on the allow list.
    upscale = with_node(
        "2", "ImageScaleBy", {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 2.0}
    )
    assert refused_nodes(await gw.generate({"workflow": upscale}, headers=user)) == {("2", "ImageScaleBy")}
    # On the allow list and not denied: accepted, and it runs.
    accepted = await gw.generate(
        {"workflow": with_node("2", "ImageInvert", {"image": ["1", 0]})}, headers=user
    )
    assert accepted.status_code == 202, accepted.text
    assert (await gw.wait(accepted.json()["id"], headers=user))["status"] == "succeeded"
    too_big = {
        str(i): {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
        for i in range(5)
    }
    resp = await gw.generate({"workflow": too_big}, headers=user)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "workflow"
    assert "at most 4" in resp.json()["detail"]
    assert await job_count(gw) == 1


async def test_raw_workflows_load_the_callers_uploads_by_reference(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    import hashlib

    from tests.integration.test_uploads import png, upload

    _, alice = await gateway.create_user("alice", limits={"allow_raw_workflows": True})
    _, bob = await gateway.create_user("bob", limits={"allow_raw_workflows": True})
    data = png(20, 10, (50, 60, 70))
    up = (await upload(gateway, data, alice)).json()
    graph = {
        "5": {"class_type": "LoadImage", "inputs": {"image": f"upload:{up['id']}"}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "raw"}},
    }
    accepted = await gateway.generate({"workflow": graph}, headers=alice)
    assert accepted.status_code == 202, accepted.text
    final = await gateway.wait(accepted.json()["id"], headers=alice)
    assert final["status"] == "succeeded", final
    staged = emulator.input_dir / f"gw_{final['id']}_5_image.png"
    assert hashlib.sha256(staged.read_bytes()).hexdigest() == up["sha256"]
    # Someone else's upload is unknown to bob, exactly like a made-up id.
    theirs = await gateway.generate({"workflow": graph}, headers=bob)
    made_up = await gateway.generate(
        {
            "workflow": {
                **graph,
                "5": {
                    "class_type": "LoadImage",
                    "inputs": {"image": "upload:2f1c8a52-7f43-4c2e-9d4c-1f0e2a3b4c5d"},
                },
            }
        },
        headers=bob,
    )
    assert theirs.status_code == made_up.status_code == 422
    assert theirs.json()["errors"] == [{**made_up.json()["errors"][0]}]


async def test_path_like_values_are_refused_on_any_node(gateway: Gateway) -> None:
    _, user = await gateway.create_user("raw", limits={"allow_raw_workflows": True})
    # Custom nodes the gateway knows nothing about, taking free-text server paths.
    paths = [
        ("VHS_LoadVideoPath", "video", "/etc/passwd"),
        ("VHS_LoadVideoPath", "video", "~/.ssh/id_rsa"),
        ("LoadTextFile", "path", "C:\\Windows\\win.ini"),
        ("LoadTextFile", "path", "c:/secrets.txt"),
        ("LoadTextFile", "path", "\\\\fileserver\\share\\x.txt"),
        ("LoadTextFile", "path", "file:///etc/shadow"),
        ("LoadTextFile", "path", "notes/../../../etc/hosts"),
        ("LoadTextFile", "path", ".."),
        ("SaveText", "filename_prefix", "..\\..\\startup"),
    ]
    for class_type, name, value in paths:
        resp = await gateway.generate({"workflow": with_node("9", class_type, {name: value})}, headers=user)
        assert refused_nodes(resp) == {("9", class_type)}, (value, resp.text)
        assert resp.json()["errors"][0]["field"] == f"workflow.9.inputs.{name}"
        assert "path" in resp.json()["errors"][0]["message"]
    # A stock node's input too: SaveImage's prefix may not climb out of the output folder.
    climbing = {
        **BLUR_GRAPH,
        "3": {**BLUR_GRAPH["3"], "inputs": {**BLUR_GRAPH["3"]["inputs"], "filename_prefix": "../x"}},
    }
    assert refused_nodes(await gateway.generate({"workflow": climbing}, headers=user)) == {("3", "SaveImage")}
    assert await job_count(gateway) == 0

    # Text that is not a path, and relative sub-folders, pass.
    prompt = {
        **with_node("4", "PrimitiveString", {"value": "a cat at ~ sunset, 1/2 scale.. wow ~cute~ /imagine"}),
        "3": {**BLUR_GRAPH["3"], "inputs": {**BLUR_GRAPH["3"]["inputs"], "filename_prefix": "raw/sub/x"}},
    }
    accepted = await gateway.generate({"workflow": prompt}, headers=user)
    assert accepted.status_code == 202, accepted.text
