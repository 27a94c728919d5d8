"""Node behaviour beyond the recordings: the SD pipeline without weights, pass-through nodes,
validation rules, timing, node sets and models per instance."""

from __future__ import annotations

import asyncio
import copy
import io
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfy_emulator import DEFAULT_MODELS, Emulator, EmulatorConfig

from .helpers import CLIENT_A, CLIENT_FLAGS, WsClient, types

#: The default txt2img workflow, as ComfyUI's "Export (API)" writes it.
TXT2IMG: dict[str, Any] = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 4, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
          "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery nature glass bottle landscape, purple galaxy bottle,", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}  # fmt: skip


def txt2img(**ksampler: Any) -> dict[str, Any]:
    p = copy.deepcopy(TXT2IMG)
    p["3"]["inputs"].update(ksampler)
    return p


async def run(
    http: aiohttp.ClientSession,
    emu: Emulator,
    ws: WsClient,
    prompt: dict[str, Any],
    client_id: str = CLIENT_A,
    **extra: Any,
) -> tuple[str, list[dict[str, Any]]]:
    start = len(ws.frames)
    async with http.post(
        emu.base_url + "/prompt", json={"prompt": prompt, "client_id": client_id, **extra}
    ) as r:
        assert r.status == 200, await r.text()
        pid = (await r.json())["prompt_id"]
    await ws.wait_done(pid)
    return pid, ws.since(start)


def data(frames: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [f["json"]["data"] for f in frames if f["frame"] == "text" and f["json"]["type"] == type_]


def saved(emu: Emulator, frames: list[dict[str, Any]]) -> Image.Image:
    image = data(frames, "executed")[-1]["output"]["images"][0]
    folder = emu.output_dir if image["type"] == "output" else emu.temp_dir
    return Image.open(folder / image["subfolder"] / image["filename"]).convert("RGB")


async def test_txt2img(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    pid, frames = await run(http, emu, ws, txt2img())
    # ComfyUI's order for this graph: loader first (it leads to the output), then the ready
    # nodes in staging order.
    assert [d["node"] for d in data(frames, "executing")] == ["4", "5", "7", "6", "3", "8", "9", None]
    progress = data(frames, "progress")
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [
        (1, 4, "3"),
        (2, 4, "3"),
        (3, 4, "3"),
        (4, 4, "3"),
    ]
    sampler_part = types(frames)[types(frames).index("progress") - 1 :]
    assert sampler_part[:3] == ["progress_state", "progress", "binary:PREVIEW_IMAGE"]
    previews = [f["decoded"] for f in frames if f["frame"] == "binary"]
    assert len(previews) == 4 and all(
        p["image_type"] == "JPEG" and p["image_magic_hex"] == "ffd8ffe0" for p in previews
    )
    img = saved(emu, frames)
    assert (
        img.size == (128, 96) and len(set(zip(*[iter(img.tobytes())] * 3))) > 50
    )  # a picture, not a flat color
    async with http.get(f"{emu.base_url}/history/{pid}") as r:
        entry = (await r.json())[pid]
    assert entry["outputs"] == {"9": data(frames, "executed")[0]["output"]}


async def test_txt2img_is_deterministic(http: aiohttp.ClientSession) -> None:
    images = []
    for seed in (1, 1, 2):
        emu = Emulator(EmulatorConfig(sampler_previews=False))
        await emu.start()
        try:
            ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
            _, frames = await run(http, emu, ws, txt2img(seed=seed))
            assert not any(f["frame"] == "binary" for f in frames)
            images.append(list(saved(emu, frames).tobytes()))
        finally:
            await emu.stop()
    assert images[0] == images[1] and images[0] != images[2]


async def test_lora_and_prompt_change_the_picture(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    _, base = await run(http, emu, ws, txt2img())
    with_lora = txt2img()
    with_lora["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": "example_lora.safetensors",
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    }
    with_lora["3"]["inputs"]["model"] = ["10", 0]
    with_lora["6"]["inputs"]["clip"] = ["10", 1]
    _, lora = await run(http, emu, ws, with_lora)
    other_text = txt2img()
    other_text["6"]["inputs"]["text"] = "a red fox"
    _, text = await run(http, emu, ws, other_text)
    pictures = [list(saved(emu, f).tobytes()) for f in (base, lora, text)]
    assert pictures[0] != pictures[1] and pictures[0] != pictures[2] and pictures[1] != pictures[2]


async def test_img2img(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    prompt = txt2img(denoise=0.5)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"]["latent_image"] = ["11", 0]
    del prompt["5"]
    _, frames = await run(http, emu, ws, prompt)
    assert saved(emu, frames).size == (64, 64)


async def test_ksampler_advanced_and_custom_samplers(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    adv = copy.deepcopy(TXT2IMG)
    adv["3"] = {"class_type": "KSamplerAdvanced", "inputs": {"model": ["4", 0], "add_noise": "enable", "noise_seed": 5, "steps": 10, "cfg": 7.0,
                "sampler_name": "euler", "scheduler": "karras", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
                "start_at_step": 2, "end_at_step": 5, "return_with_leftover_noise": "disable"}}  # fmt: skip
    _, frames = await run(http, emu, ws, adv)
    assert [(p["value"], p["max"]) for p in data(frames, "progress")] == [(1, 3), (2, 3), (3, 3)]
    custom = copy.deepcopy(TXT2IMG)
    custom["3"] = {"class_type": "SamplerCustom", "inputs": {"model": ["4", 0], "add_noise": True, "noise_seed": 5, "cfg": 7.0, "positive": ["6", 0],
                   "negative": ["7", 0], "sampler": ["12", 0], "sigmas": ["13", 0], "latent_image": ["5", 0]}}  # fmt: skip
    custom["12"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    custom["13"] = {
        "class_type": "BasicScheduler",
        "inputs": {"model": ["4", 0], "scheduler": "simple", "steps": 2, "denoise": 1.0},
    }
    _, frames = await run(http, emu, ws, custom)
    assert [(p["value"], p["max"]) for p in data(frames, "progress")] == [(1, 2), (2, 2)]
    assert saved(emu, frames).size == (128, 96)


async def test_previews_with_metadata_for_ksampler(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_FLAGS, flags=True)
    pid, frames = await run(http, emu, ws, txt2img(steps=2), client_id=CLIENT_FLAGS)
    previews = [f["decoded"] for f in frames if f["frame"] == "binary"]
    assert [p["event_type"] for p in previews] == [4, 4]
    assert previews[0]["metadata"] == {
        "node_id": "3",
        "prompt_id": pid,
        "display_node_id": "3",
        "parent_node_id": None,
        "real_node_id": "3",
        "image_type": "image/jpeg",
    }
    t = types(frames)
    i = t.index("binary:PREVIEW_IMAGE_WITH_METADATA")
    assert t[i - 1 : i + 2] == ["progress_state", "binary:PREVIEW_IMAGE_WITH_METADATA", "progress"]


async def test_previews_of_a_job_without_client_go_to_everyone_as_event_1(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    flags = await WsClient.connect(http, emu.base_url, CLIENT_FLAGS, flags=True)
    await flags.wait_for(lambda f: len(f) >= 2)
    async with http.post(emu.base_url + "/prompt", json={"prompt": txt2img(steps=2)}) as r:
        assert r.status == 200
    await emu.wait_idle()
    await flags.settle(0.1)
    assert [f["decoded"]["event_type"] for f in flags.frames if f["frame"] == "binary"] == [1, 1]
    assert "executing" not in types(flags.frames)


async def test_unknown_checkpoint_is_rejected_with_the_model_list(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    async with http.post(emu.base_url + "/prompt", json={"prompt": prompt}) as r:
        assert r.status == 400
        body = await r.json()
    err = body["node_errors"]["4"]["errors"][0]
    assert err["type"] == "value_not_in_list"
    assert err["details"] == f"ckpt_name: 'nope.safetensors' not in {DEFAULT_MODELS['checkpoints']}"
    assert body["node_errors"]["4"]["dependent_outputs"] == ["9"]
    async with http.get(emu.base_url + "/object_info/CheckpointLoaderSimple") as r:
        info = (await r.json())["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    assert info == [DEFAULT_MODELS["checkpoints"], {"tooltip": "The name of the checkpoint (model) to load."}]
    async with http.get(emu.base_url + "/models/loras") as r:
        assert await r.json() == DEFAULT_MODELS["loras"]


async def test_models_per_instance(http: aiohttp.ClientSession) -> None:
    emu = Emulator(
        EmulatorConfig(
            models={
                "checkpoints": ["only.safetensors"],
                "upscale_models": ["4x.pth"],
                "vae": ["a.safetensors"],
            }
        )
    )
    await emu.start()
    try:
        async with http.get(emu.base_url + "/object_info") as r:
            info = await r.json()
        assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["only.safetensors"]
        assert info["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"] == ["4x.pth"]
        assert info["VAELoader"]["input"]["required"]["vae_name"][0] == ["a.safetensors", "pixel_space"]
        assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == []
        async with http.post(emu.base_url + "/prompt", json={"prompt": txt2img()}) as r:
            assert r.status == 400
        ok = txt2img()
        ok["4"]["inputs"]["ckpt_name"] = "only.safetensors"
        async with http.post(emu.base_url + "/prompt", json={"prompt": ok}) as r:
            assert r.status == 200
        await emu.wait_idle()
    finally:
        await emu.stop()


async def test_preview_image_and_pass_through_nodes(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 20, "height": 10, "batch_size": 2, "color": 255},
        },
        "2": {
            "class_type": "ImageSharpen",
            "inputs": {"image": ["1", 0], "sharpen_radius": 1, "sigma": 1.0, "alpha": 1.0},
        },
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "red"}},
        "5": {"class_type": "MaskPreview", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "latents/x"}},
    }
    pid, frames = await run(http, emu, ws, prompt)
    executed = {d["node"]: d["output"] for d in data(frames, "executed")}
    assert set(executed) == {"3", "5", "6"}  # a pass-through output node (SaveLatent) reports no UI
    assert isinstance(executed["6"]["text"][0], str)  # PreviewAny shows its input as text
    images = executed["3"]["images"]
    assert len(images) == 2 and all(i["type"] == "temp" and i["subfolder"] == "" for i in images)
    assert [i["filename"][-12:] for i in images] == ["_00001_.png", "_00002_.png"] or all(
        i["filename"].startswith("ComfyUI_temp_") for i in images
    )
    assert all(i["filename"].startswith("ComfyUI_temp_") and i["filename"].endswith("_.png") for i in images)
    for i in images:
        async with http.get(emu.base_url + "/view", params=i) as r:
            assert r.status == 200
            assert Image.open(io.BytesIO(await r.read())).getpixel((0, 0))[:3] == (0, 0, 255)
    assert executed["5"]["images"][0]["type"] == "temp"
    assert list(emu.output_dir.iterdir()) == []
    async with http.get(f"{emu.base_url}/history/{pid}") as r:
        assert set((await r.json())[pid]["outputs"]) == {"3", "5", "6"}


async def test_save_image_websocket_sends_png_frames(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    _, frames = await run(http, emu, ws, prompt)
    pngs = [f["decoded"] for f in frames if f["frame"] == "binary"]
    assert [(p["event_type"], p["image_type"], p["image_magic_hex"]) for p in pngs] == [
        (1, "PNG", "89504e47")
    ] * 2
    assert [(p["value"], p["max"]) for p in data(frames, "progress")] == [(0, 2), (1, 2)]


async def test_extra_pnginfo_and_sensitive_extra_data(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "meta"}},
    }
    extra = {"extra_pnginfo": {"workflow": {"nodes": []}}, "api_key_comfy_org": "secret"}
    pid, frames = await run(http, emu, ws, prompt, extra_data=extra)
    img = Image.open(emu.output_dir / "meta_00001_.png")
    assert img.text["workflow"] == '{"nodes": []}' and "prompt" in img.text
    async with http.get(f"{emu.base_url}/history/{pid}") as r:
        item = (await r.json())[pid]["prompt"]
    assert item[3] == {"extra_pnginfo": {"workflow": {"nodes": []}}, "client_id": CLIENT_A}


async def test_validation_rules(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async def post(prompt: dict[str, Any], **extra: Any) -> tuple[int, Any]:
        async with http.post(emu.base_url + "/prompt", json={"prompt": prompt, **extra}) as r:
            return r.status, await r.json()

    base = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": "16", "height": 16.9, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": "0.5"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": 123}},
    }
    status, body = await post(copy.deepcopy(base))
    assert status == 200
    await emu.wait_idle()
    async with http.get(f"{emu.base_url}/history/{body['prompt_id']}") as r:
        item = (await r.json())[body["prompt_id"]]["prompt"]
    # Values are converted in place, as ComfyUI does.
    assert item[2]["1"]["inputs"]["width"] == 16 and item[2]["1"]["inputs"]["height"] == 16
    assert item[2]["2"]["inputs"]["sigma"] == 0.5 and item[2]["3"]["inputs"]["filename_prefix"] == "123"

    bad = copy.deepcopy(base)
    bad["2"]["inputs"]["sigma"] = 0.01
    status, body = await post(bad)
    assert status == 400
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_smaller_than_min"
    assert body["node_errors"]["2"]["errors"][0]["message"] == "Value 0.01 smaller than min of 0.1"

    bad = copy.deepcopy(base)
    bad["3"]["inputs"]["images"] = ["1", 0, 1]
    status, body = await post(bad)
    assert body["node_errors"]["3"]["errors"][0]["type"] == "bad_linked_input"

    bad = copy.deepcopy(base)
    bad["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    bad["2"]["inputs"]["image"] = ["4", 0]
    status, body = await post(bad)
    err = body["node_errors"]["2"]["errors"][0]
    assert (
        err["type"] == "return_type_mismatch"
        and err["details"] == "image, received_type(LATENT) mismatch input_type(IMAGE)"
    )

    bad = copy.deepcopy(base)
    bad["2"]["inputs"]["image"] = ["42", 0]
    status, body = await post(bad)
    err = body["node_errors"]["2"]["errors"][0]
    assert err["type"] == "exception_during_inner_validation" and err["details"] == "'42'"
    assert body["node_errors"]["2"]["dependent_outputs"] == ["3"] and body["error"]["details"] == ""

    bad = copy.deepcopy(base)
    del bad["1"]["class_type"]
    status, body = await post(bad)
    assert body["error"]["message"] == "Cannot execute because a node is missing the class_type property."

    # One good output and one bad: accepted, with the bad one's errors reported.
    two = copy.deepcopy(base)
    two["4"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}}
    two["5"] = {"class_type": "ImageInvert", "inputs": {}}
    status, body = await post(two)
    assert status == 200 and body["node_errors"]["5"]["errors"][0]["type"] == "required_input_missing"
    await emu.wait_idle()
    async with http.get(f"{emu.base_url}/history/{body['prompt_id']}") as r:
        assert (await r.json())[body["prompt_id"]]["prompt"][4] == ["3"]

    # partial_execution_targets restricts the outputs.
    status, body = await post(copy.deepcopy(two), partial_execution_targets=["4"])
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    await emu.wait_idle()


async def test_queue_order_front_and_number(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    blocker = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {
            "class_type": "HarnessSlowSampler",
            "inputs": {"image": ["1", 0], "steps": 1, "seconds_per_step": 0.3},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "order"}},
    }

    async def post(color: int, **extra: Any) -> dict[str, Any]:
        p = copy.deepcopy(blocker)
        p["1"]["inputs"]["color"] = color
        p["2"]["inputs"]["seconds_per_step"] = 0.3 if color == 0 else 0
        async with http.post(
            emu.base_url + "/prompt", json={"prompt": p, "client_id": CLIENT_A, **extra}
        ) as r:
            return await r.json()

    first = await post(0)
    await ws.wait_message("executing", node="2")
    a = await post(1)
    b = await post(2, front=True)
    c = await post(3, number=0.5)
    assert (a["number"], b["number"], c["number"]) == (1, -2, 0.5)
    async with http.get(emu.base_url + "/queue") as r:
        pending = (await r.json())["queue_pending"]
    assert sorted(i[0] for i in pending) == [-2, 0.5, 1]
    await ws.wait_done(a["prompt_id"])
    started = [d["prompt_id"] for d in data(ws.frames, "execution_start")]
    assert started == [first["prompt_id"], b["prompt_id"], c["prompt_id"], a["prompt_id"]]


async def test_node_and_step_seconds(http: aiohttp.ClientSession) -> None:
    emu = Emulator(EmulatorConfig(node_seconds=0.05, step_seconds=0.05, sampler_previews=False))
    await emu.start()
    try:
        ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
        t0 = time.perf_counter()
        await run(http, emu, ws, txt2img(steps=4))
        elapsed = time.perf_counter() - t0
        # 6 non-sampler nodes x 0.05 s + 4 steps x 0.05 s: the configured time is spent, at least
        assert elapsed >= 0.5
    finally:
        await emu.stop()


async def test_allowlist_and_extra_nodes(http: aiohttp.ClientSession) -> None:
    custom = {
        "input": {"required": {"image": ["IMAGE"], "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0}]}},
        "input_order": {"required": ["image", "strength"]},
        "output": ["IMAGE"], "output_is_list": [False], "output_name": ["IMAGE"], "name": "MyFilter",
        "display_name": "My Filter", "description": "", "python_module": "custom_nodes.mine", "category": "image", "output_node": False,
    }  # fmt: skip
    emu = Emulator(
        EmulatorConfig(node_allowlist=["EmptyImage", "SaveImage"], extra_nodes={"MyFilter": custom})
    )
    await emu.start()
    try:
        async with http.get(emu.base_url + "/object_info") as r:
            assert sorted(await r.json()) == ["EmptyImage", "MyFilter", "SaveImage"]
        ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
        prompt = {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
            },
            "2": {"class_type": "MyFilter", "inputs": {"image": ["1", 0], "strength": 1.5}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "custom"}},
        }
        _, frames = await run(http, emu, ws, prompt)
        assert "execution_success" in types(frames)
        prompt["2"]["inputs"]["strength"] = 3
        async with http.post(emu.base_url + "/prompt", json={"prompt": prompt}) as r:
            assert (
                r.status == 400
                and (await r.json())["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"
            )
    finally:
        await emu.stop()


async def test_partial_cache_reuses_upstream_only(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    await run(http, emu, ws, txt2img())
    changed = txt2img()
    changed["9"]["inputs"]["filename_prefix"] = "other"
    _, frames = await run(http, emu, ws, changed)
    assert data(frames, "execution_cached")[0]["nodes"] == ["3", "4", "5", "6", "7", "8"]
    assert [d["node"] for d in data(frames, "executing")] == ["9", None]
    reseeded = txt2img(seed=7)
    _, frames = await run(http, emu, ws, reseeded)
    assert data(frames, "execution_cached")[0]["nodes"] == ["4", "5", "6", "7"]
    assert [d["node"] for d in data(frames, "executing")] == ["3", "8", "9", None]


@pytest.mark.parametrize("steps", [0, 1])
async def test_harness_sampler_edge_steps(emu: Emulator, http: aiohttp.ClientSession, steps: int) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": steps},
        },
        "2": {
            "class_type": "HarnessSlowSampler",
            "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": 0},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "edge"}},
    }
    _, frames = await run(http, emu, ws, prompt)
    assert len(data(frames, "progress")) == steps


async def test_interrupt_between_jobs_is_forgotten(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.post(emu.base_url + "/interrupt") as r:
        assert r.status == 200
    await asyncio.sleep(0.05)
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    _, frames = await run(http, emu, ws, txt2img(steps=1))
    assert "execution_success" in types(frames)
