"""The OpenAI-compatible images API, driven by the official `openai` SDK against the real app and the emulator."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image

from tests.integration.conftest import Gateway
from tests.integration.test_uploads import INPAINT_TEMPLATE, png, stored_files, upload_count


def client(gw: Gateway, headers: dict[str, str], **options: object) -> AsyncOpenAI:
    key = headers["Authorization"].removeprefix("Bearer ")
    # No retries: a retried request would hide what the gateway answered first.
    return AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=60, **options)


async def user_jobs(gw: Gateway, headers: dict[str, str]) -> list[dict]:
    resp = await gw.http.get("/v1/jobs", params={"limit": 100}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


async def test_models_list_the_templates_that_opted_in(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice")
    async with client(gw, alice) as oa:
        models = await oa.models.list()
        assert sorted(m.id for m in models.data) == ["img2img", "txt2img"]
        assert (await oa.models.retrieve("txt2img")).id == "txt2img"
        with pytest.raises(openai.NotFoundError) as err:
            await oa.models.retrieve("blur")  # a template that did not opt in
        assert err.value.code == "model_not_found"

    # The OpenAPI spec documents the routes, their answers and their errors.
    spec = (await gw.http.get("/openapi.json")).json()
    for path in ("/v1/images/generations", "/v1/images/edits"):
        op = spec["paths"][path]["post"]
        assert op["tags"] == ["openai-compatible images"]
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ImagesResponse"
        )
        for status in ("400", "404", "429", "504"):
            assert op["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/OpenAIError"
            )
        assert "422" not in op["responses"]
    assert "multipart/form-data" in spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert spec["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/ModelList")


async def test_generate_with_url_and_b64_json(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    async with client(gateway, alice) as oa:
        # n maps onto txt2img's batch size: one job, two images.
        made = await oa.images.generate(model="txt2img", prompt="a lighthouse at dusk", n=2, size="64x72")
        assert len(made.data) == 2 and made.created > 0
        for image in made.data:
            assert image.url is not None and image.b64_json is None and image.revised_prompt is None
            got = await gateway.http.get(image.url)  # absolute and signed: fetched without a key
            assert got.status_code == 200
            assert Image.open(io.BytesIO(got.content)).size == (64, 72)

        inline = await oa.images.generate(
            model="txt2img",
            prompt="a lighthouse",
            size="72x80",
            response_format="b64_json",
            user="end-user-7",
        )
        assert len(inline.data) == 1 and inline.data[0].url is None
        assert Image.open(io.BytesIO(base64.b64decode(inline.data[0].b64_json))).size == (72, 80)

    # Ordinary jobs of the caller's, with the prompt and size where the mapping says.
    jobs = await user_jobs(gateway, alice)
    assert len(jobs) == 2 and all(j["status"] == "succeeded" and j["template"] == "txt2img" for j in jobs)
    newest = jobs[0]
    assert (newest["params"]["prompt"], newest["params"]["width"], newest["params"]["height"]) == (
        "a lighthouse",
        72,
        80,
    )
    assert newest["metadata"] == {"via": "openai", "openai_user": "end-user-7"}
    assert jobs[1]["params"]["batch_size"] == 2


async def test_edit_with_an_uploaded_image(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    _, alice = await gateway.create_user("alice")
    source = png(40, 32, (10, 200, 10))
    async with client(gateway, alice) as oa:
        edited = await oa.images.edit(
            model="img2img",
            image=("photo.png", source, "image/png"),
            prompt="make it night",
            n=2,
            response_format="b64_json",
        )
    # img2img has no batch size: n jobs, each with the image staged on the backend.
    assert len(edited.data) == 2
    for image in edited.data:
        assert Image.open(io.BytesIO(base64.b64decode(image.b64_json))).format == "PNG"
    jobs = await user_jobs(gateway, alice)
    assert len(jobs) == 2 and all(j["status"] == "succeeded" for j in jobs)
    assert jobs[0]["params"]["image"] == jobs[1]["params"]["image"]  # one upload, used by both
    for job in jobs:
        assert (emulator.input_dir / f"gw_{job['id']}_image.png").read_bytes() == source


async def test_over_a_limit_is_a_rate_limit_error_and_makes_no_job(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice", limits={"max_queued": 1})
    async with client(gw, alice) as oa:
        # Two jobs (img2img makes one per image) against a quota of one: all or none.
        with pytest.raises(openai.RateLimitError) as err:
            await oa.images.edit(model="img2img", image=("a.png", png(), "image/png"), prompt="x", n=2)
        assert err.value.code == "max_queued"
        assert err.value.response.headers["retry-after"].isdigit()
        assert await user_jobs(gw, alice) == []


async def test_unknown_model_is_not_found_and_bad_fields_are_named(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice")
    async with client(gw, alice) as oa:
        with pytest.raises(openai.NotFoundError) as err:
            await oa.images.generate(model="dall-e-3", prompt="a cat")
        assert err.value.code == "model_not_found" and err.value.param == "model"
        assert err.value.body["type"] == "not_found_error"

        cases = [
            ("size", dict(model="txt2img", prompt="a cat", size="huge")),
            # A size the template refuses (its maximum is 2048): named as the request's field.
            ("size", dict(model="txt2img", prompt="a cat", size="4096x4096")),
            ("n", dict(model="txt2img", prompt="a cat", n=11)),
            ("prompt", dict(model="txt2img", prompt="")),
            ("model", dict(model="img2img", prompt="a cat")),  # an edit model
        ]
        for field, kwargs in cases:
            with pytest.raises(openai.BadRequestError) as bad:
                await oa.images.generate(**kwargs)
            assert bad.value.param == field, (field, bad.value.body)
            assert bad.value.body["type"] == "invalid_request_error"
    async with client(gw, {"Authorization": "Bearer cgw_not_a_key"}) as oa:
        with pytest.raises(openai.AuthenticationError):
            await oa.images.generate(model="txt2img", prompt="a cat")
    assert await user_jobs(gw, alice) == []


async def test_a_job_that_outlives_the_bound_is_an_error_naming_it(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gateway = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], openai_wait_seconds=0.5))
    await gateway.wait_ready()
    emulator.config.step_seconds = 0.5
    _, alice = await gateway.create_user("alice")
    async with client(gateway, alice) as oa:
        with pytest.raises(openai.APIStatusError) as err:
            await oa.images.generate(model="txt2img", prompt="slow", size="64x64")
    assert err.value.status_code == 504
    assert err.value.response.headers["x-should-retry"] == "false"
    job_ids = err.value.body["job_ids"]
    assert [j["id"] for j in await user_jobs(gateway, alice)] == job_ids
    assert job_ids[0] in err.value.message
    await gateway.http.post(f"/v1/jobs/{job_ids[0]}/cancel", headers=alice)


async def test_bad_edits_are_named_and_store_nothing(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice")
    async with client(gw, alice) as oa:
        with pytest.raises(openai.BadRequestError) as err:
            await oa.images.edit(
                model="img2img", image=("a.png", b"%PDF-1.4 not an image" * 10, "image/png"), prompt="x"
            )
        assert err.value.param == "image"
        with pytest.raises(openai.BadRequestError) as err:
            await oa.images.edit(model="txt2img", image=("a.png", png(), "image/png"), prompt="x")
        assert err.value.param == "model"
        with pytest.raises(openai.BadRequestError) as err:
            await oa.images.edit(
                model="img2img",
                image=("a.png", png(), "image/png"),
                mask=("m.png", png(), "image/png"),
                prompt="x",
            )
        assert err.value.param == "mask"
        with pytest.raises(openai.BadRequestError) as err:
            await oa.images.edit(model="img2img", image=("a.png", png(), "image/png"), prompt="x" * 3000)
        assert err.value.param == "prompt"
    assert await user_jobs(gw, alice) == []
    assert (await upload_count(gw)) == 0
    assert stored_files(gw.state.settings.storage_dir) == []


async def test_a_template_an_admin_maps_becomes_a_model(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway(openai_wait_seconds=0.2)
    _, alice = await gw.create_user("alice")
    doc = (await gw.http.get("/v1/templates/blur", headers=gw.admin)).json()
    document = {
        "workflow": doc["workflow"],
        "params": {
            "width": {"type": "integer", "default": 64, "bind": ["1.inputs.width"]},
            "height": {"type": "integer", "default": 64, "bind": ["1.inputs.height"]},
            "prompt": {"type": "string", "default": "", "bind": ["3.inputs.filename_prefix"]},
            "look": {
                "type": "string",
                "default": "plain",
                "enum": ["plain", "vivid"],
                "bind": ["2.inputs.blur_radius"],
            },
        },
    }
    bad = await gw.http.put(
        "/v1/templates/flat", json={**document, "openai": {"prompt": "width"}}, headers=gw.admin
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "openai", bad.text
    good = await gw.http.put(
        "/v1/templates/flat",
        json={**document, "openai": {"prompt": "prompt", "size": ["width", "height"], "style": "look"}},
        headers=gw.admin,
    )
    assert good.status_code == 201, good.text
    async with client(gw, alice) as oa:
        assert "flat" in {m.id for m in (await oa.models.list()).data}
        # `style` goes where the mapping says; `quality` is not mapped here, so it is ignored. Nothing
        # runs on this gateway: past the wait, the error names the job.
        with pytest.raises(openai.APIStatusError) as err:
            await oa.images.generate(model="flat", prompt="p", size="24x16", style="vivid", quality="hd")
        assert err.value.status_code == 504
    job = await gw.job(err.value.body["job_ids"][0], alice)
    assert (job["params"]["look"], job["params"]["width"], job["params"]["height"]) == ("vivid", 24, 16)


async def test_refused_requests_count_against_the_rate(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice", limits={"rate_per_minute": 2})
    async with client(gw, alice) as oa:
        for _ in range(2):
            with pytest.raises(openai.NotFoundError):
                await oa.images.generate(model="nope", prompt="a cat")
        # A client cannot probe (or flood) without limit by sending bad requests.
        with pytest.raises(openai.RateLimitError) as err:
            await oa.images.generate(model="txt2img", prompt="a cat")
        assert err.value.code == "rate_per_minute"
    everyone = await gw.http.get("/v1/admin/jobs", headers=gw.admin)
    assert everyone.status_code == 200 and everyone.json()["items"] == []


async def test_an_edit_with_a_mask_stages_the_mask_onto_the_image(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    template = {
        **INPAINT_TEMPLATE,
        "params": {
            **INPAINT_TEMPLATE["params"],
            "prompt": {"type": "string", "default": "x", "bind": ["3.inputs.filename_prefix"]},
        },
        "openai": {"prompt": "prompt", "image": "image", "mask": "mask"},
    }
    assert (
        await gateway.http.put("/v1/templates/inpaint", json=template, headers=gateway.admin)
    ).status_code == 201
    _, alice = await gateway.create_user("alice")
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 8, 16))  # left half opaque
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    async with client(gateway, alice) as oa:
        edited = await oa.images.edit(
            model="inpaint",
            image=("a.png", png(16, 16, (10, 120, 230)), "image/png"),
            mask=("m.png", buf.getvalue(), "image/png"),
            prompt="masked",
        )
    assert len(edited.data) == 1
    [job] = await user_jobs(gateway, alice)
    with Image.open(emulator.input_dir / f"gw_{job['id']}_mask.png") as staged:
        rgba = staged.convert("RGBA")
        assert rgba.getpixel((2, 2)) == (10, 120, 230, 255) and rgba.getpixel((12, 2))[3] == 0


async def test_a_failed_job_is_an_error_naming_it_that_the_sdk_does_not_retry(
    gateway: Gateway, emulator
) -> None:  # noqa: ANN001
    emulator.fail_class("KSampler", "out of memory")
    _, alice = await gateway.create_user("alice")
    # With the SDK's default retries: the gateway says not to retry, so one request makes one job.
    async with AsyncOpenAI(
        base_url=gateway.base_url + "/v1", api_key=alice["Authorization"][7:], timeout=60
    ) as oa:
        with pytest.raises(openai.InternalServerError) as err:
            await oa.images.generate(model="txt2img", prompt="a cat", size="64x64")
    assert err.value.status_code == 502 and err.value.code == "job_failed"
    assert "out of memory" in err.value.message
    jobs = await user_jobs(gateway, alice)
    assert [j["id"] for j in jobs] == err.value.body["job_ids"] and jobs[0]["status"] == "failed"
