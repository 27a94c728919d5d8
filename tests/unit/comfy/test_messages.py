"""WebSocket frame parsing, checked against every frame recorded from a real ComfyUI."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from app.comfy.messages import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    Preview,
    Progress,
    ProgressState,
    ProgressText,
    Status,
    Unknown,
    parse_binary,
    parse_event,
    parse_text,
)

from .helpers import RECORDINGS, iter_frames, load

TEXT_CLASSES: dict[str, type] = {
    "status": Status,
    "execution_start": ExecutionStart,
    "execution_cached": ExecutionCached,
    "executing": Executing,
    "executed": Executed,
    "progress": Progress,
    "progress_state": ProgressState,
    "execution_success": ExecutionSuccess,
    "execution_error": ExecutionError,
    "execution_interrupted": ExecutionInterrupted,
    "feature_flags": FeatureFlags,
}
IMAGE_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}
IMAGE_CODE = {"JPEG": 1, "PNG": 2}


# ------------------------------------------------------------------------------------------------
# Checking one recorded frame


def check_text(frame_json: dict[str, Any]) -> Any:
    """Parse a recorded text frame and check every field against the recorded data."""
    kind, data = frame_json["type"], frame_json["data"]
    msg = parse_text(json.dumps(frame_json))
    assert type(msg) is TEXT_CLASSES[kind], (kind, msg)
    if kind != "status" and kind != "feature_flags":
        assert msg.prompt_id == data.get("prompt_id")
    if kind == "status":
        assert msg.queue_remaining == data["status"]["exec_info"]["queue_remaining"]
        assert msg.sid == data.get("sid")
    elif kind in ("execution_start", "execution_success"):
        assert msg.timestamp == data["timestamp"]
    elif kind == "execution_cached":
        assert msg.nodes == data["nodes"]
        assert msg.timestamp == data.get("timestamp")
    elif kind == "executing":
        assert msg.node == data["node"]
        assert msg.display_node == data.get("display_node")
        assert msg.finished is (data["node"] is None)
    elif kind == "executed":
        assert msg.node == data["node"]
        assert msg.output == data["output"]
        assert msg.display_node == data.get("display_node")
    elif kind == "progress":
        assert (msg.node, msg.value, msg.max) == (data["node"], data["value"], data["max"])
        assert isinstance(msg.value, int) and isinstance(msg.max, int)
    elif kind == "progress_state":
        assert set(msg.nodes) == set(data["nodes"])
        for node_id, node in data["nodes"].items():
            parsed = msg.nodes[node_id]
            assert parsed.node_id == node["node_id"]
            assert parsed.value == node["value"] and isinstance(parsed.value, float)
            assert parsed.max == node["max"] and isinstance(parsed.max, float)
            assert parsed.state == node["state"]
            assert parsed.display_node_id == node.get("display_node_id")
            assert parsed.parent_node_id == node.get("parent_node_id")
            assert parsed.real_node_id == node.get("real_node_id")
    elif kind == "execution_error":
        assert msg.node_id == data["node_id"]
        assert msg.node_type == data["node_type"]
        assert msg.exception_type == data["exception_type"]
        assert msg.exception_message == data["exception_message"]
        assert msg.traceback == data["traceback"]
        assert msg.executed == data["executed"]
        assert msg.timestamp == data["timestamp"]
        assert msg.current_outputs == data["current_outputs"]
    elif kind == "execution_interrupted":
        assert (msg.node_id, msg.node_type) == (data["node_id"], data["node_type"])
        assert msg.executed == data["executed"]
        assert msg.timestamp == data["timestamp"]
    elif kind == "feature_flags":
        assert msg.flags == data
    return msg


def build_binary(frame: dict[str, Any]) -> bytes:
    """Rebuild a recorded binary frame from its `decoded` header, with a stand-in image that
    starts with the recorded magic bytes. Checks the result against `length` and `first8_hex`."""
    d = frame["decoded"]
    event = d["event_type"]
    if event == 1:
        image = bytes.fromhex(d["image_magic_hex"]).ljust(d["image_bytes"], b"\x00")
        raw = struct.pack(">II", event, IMAGE_CODE[d["image_type"]]) + image
    elif event == 4:
        metadata = json.dumps(d["metadata"]).encode()  # ComfyUI uses json.dumps' defaults
        assert len(metadata) == d["metadata_length"]
        image = bytes.fromhex(d["image_magic_hex"]).ljust(d["image_bytes"], b"\x00")
        raw = struct.pack(">II", event, len(metadata)) + metadata + image
    elif event == 3:
        node = d["node_id"].encode()
        raw = struct.pack(">II", event, len(node)) + node + d["text"].encode()
    else:  # pragma: no cover - the recordings have no other events
        raise AssertionError(f"unexpected binary event {event}")
    assert len(raw) == frame["length"]
    assert raw[:8].hex() == frame["first8_hex"]
    return raw


def check_binary(frame: dict[str, Any]) -> Any:
    d = frame["decoded"]
    msg = parse_binary(build_binary(frame))
    if d["event_type"] in (1, 4):
        assert isinstance(msg, Preview)
        assert msg.event == d["event_type"]
        assert len(msg.image) == d["image_bytes"]
        assert msg.image.startswith(bytes.fromhex(d["image_magic_hex"]))
        if d["event_type"] == 1:
            assert msg.image_type == IMAGE_MIME[d["image_type"]]
            assert msg.metadata is None and msg.prompt_id is None
        else:
            assert msg.metadata == d["metadata"]
            assert msg.image_type == d["metadata"]["image_type"]
            assert msg.prompt_id == d["metadata"]["prompt_id"]
            assert msg.node_id == d["metadata"]["node_id"]
    else:
        assert isinstance(msg, ProgressText)
        assert (msg.node_id, msg.text) == (d["node_id"], d["text"])
        assert msg.prompt_id is None
    return msg


# ------------------------------------------------------------------------------------------------
# The recordings


def test_every_example_message_type() -> None:
    examples = load("ws_message_examples.json")["types"]
    seen_text = set()
    for name, entry in examples.items():
        example = entry["example"]
        if name.startswith("binary:"):
            check_binary(example)
        else:
            check_text(example)
            seen_text.add(name)
    # Every text type ComfyUI was seen sending has a class, and every class was seen.
    assert seen_text == set(TEXT_CLASSES)


FRAME_FILES = sorted(p.name for p in RECORDINGS.glob("scenario_*.json")) + sorted(
    p.name for p in RECORDINGS.glob("ws_full_session_*.json")
)


@pytest.mark.parametrize("name", FRAME_FILES)
def test_every_recorded_frame(name: str) -> None:
    frames = list(iter_frames(load(name)))
    for where, frame in frames:
        if frame["frame"] == "text":
            msg = check_text(frame["json"])
        else:
            msg = check_binary(frame)
        assert not isinstance(msg, Unknown), (name, where)


def test_recordings_have_frames() -> None:
    """Guard against iter_frames silently finding nothing."""
    total = sum(len(list(iter_frames(load(n)))) for n in FRAME_FILES)
    assert total > 500
    binary = [f for n in FRAME_FILES for _, f in iter_frames(load(n)) if f["frame"] == "binary"]
    assert {f["decoded"]["event_type"] for f in binary} == {1, 3, 4}


def test_reconnect_executing_has_no_prompt_id() -> None:
    frames = load("scenario_reconnect_mid_job.json")["ws_messages"]
    msg = parse_text(json.dumps(frames[1]["json"]))
    assert msg == Executing(prompt_id=None, node="2", display_node=None)
    assert not msg.finished


def test_prompt_end_executing_node_null() -> None:
    msg = parse_text('{"type": "executing", "data": {"node": null, "prompt_id": "p"}}')
    assert msg == Executing(prompt_id="p", node=None)
    assert msg.finished


def test_status_without_sid() -> None:
    assert parse_text('{"type":"status","data":{"status":{"exec_info":{"queue_remaining":3}}}}') == Status(
        3, None
    )


def test_parse_event_matches_history_messages() -> None:
    history = load("history_failed.json")
    (entry,) = history.values()
    for type_, data in entry["status"]["messages"]:
        msg = parse_event(type_, data)
        assert type(msg) is TEXT_CLASSES[type_]


def test_messages_are_frozen() -> None:
    msg = parse_text('{"type":"execution_start","data":{"prompt_id":"p","timestamp":1}}')
    with pytest.raises(AttributeError):
        msg.prompt_id = "other"  # type: ignore[misc]


def test_png_preview_and_unknown_image_type() -> None:
    png = parse_binary(struct.pack(">II", 1, 2) + b"\x89PNG")
    assert png == Preview(event=1, image_type="image/png", image=b"\x89PNG", metadata=None)
    odd = parse_binary(struct.pack(">II", 1, 9) + b"xx")
    assert isinstance(odd, Preview) and odd.image_type == "application/octet-stream"


def test_preview_with_metadata_without_image_type() -> None:
    meta = json.dumps({"node_id": "5", "prompt_id": "p"}).encode()
    msg = parse_binary(struct.pack(">II", 4, len(meta)) + meta + b"img")
    assert isinstance(msg, Preview)
    assert (msg.prompt_id, msg.node_id, msg.image, msg.image_type) == (
        "p",
        "5",
        b"img",
        "application/octet-stream",
    )


def test_progress_text_with_empty_text_and_unicode() -> None:
    raw = struct.pack(">II", 3, 2) + b"12" + "ünï ✓".encode()
    assert parse_binary(raw) == ProgressText("12", "ünï ✓")
    assert parse_binary(struct.pack(">II", 3, 1) + b"7") == ProgressText("7", "")


# ------------------------------------------------------------------------------------------------
# Unknown and malformed input


@pytest.mark.parametrize(
    "raw, type_",
    [
        ('{"type": "crystools.monitor", "data": {"cpu": 3}}', "crystools.monitor"),
        ('{"type": "execution_complete", "data": {}}', "execution_complete"),
        ('{"type": "progress", "data": {"value": "x", "max": 3}}', "progress"),
        ('{"type": "progress", "data": {"max": 3}}', "progress"),
        ('{"type": "progress", "data": {"value": true, "max": 3}}', "progress"),
        ('{"type": "executing", "data": "node 3"}', "executing"),
        ('{"type": "executing", "data": {"node": {"id": 1}}}', "executing"),
        ('{"type": "executed", "data": {"node": "3", "output": []}}', "executed"),
        ('{"type": "status", "data": {"status": []}}', "status"),
        ('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": "many"}}}}', "status"),
        ('{"type": "progress_state", "data": {"nodes": {"1": {"value": 1}}}}', "progress_state"),
        ('{"type": "progress_state", "data": {"nodes": [1, 2]}}', "progress_state"),
        ('{"type": "execution_error", "data": {"traceback": "not a list"}}', "execution_error"),
        ('{"type": "execution_cached", "data": {"nodes": 5}}', "execution_cached"),
        ('{"type": "feature_flags", "data": null}', "feature_flags"),
        ('{"type": "feature_flags"}', "feature_flags"),
        ('{"data": {}}', "<invalid>"),
        ('{"type": 5, "data": {}}', "<invalid>"),
        ("[1, 2, 3]", "<invalid>"),
        ('"status"', "<invalid>"),
        ("null", "<invalid>"),
        ("", "<invalid>"),
        ("{not json", "<invalid>"),
        ("\udcff", "<invalid>"),
        ("[" * 100_000, "<invalid>"),
    ],
)
def test_malformed_text_is_unknown(raw: str, type_: str) -> None:
    msg = parse_text(raw)
    assert isinstance(msg, Unknown)
    assert msg.type == type_


@pytest.mark.parametrize(
    "raw, type_",
    [
        (b"", "<invalid>"),
        (b"\x00\x00\x01", "<invalid>"),
        (struct.pack(">I", 2) + b"whatever", "binary:2"),  # UNENCODED_PREVIEW_IMAGE: not sent to clients
        (struct.pack(">I", 99), "binary:99"),
        (struct.pack(">I", 1) + b"\x00\x00", "binary:1"),  # image type cut short
        (struct.pack(">II", 4, 1000) + b"{}", "binary:4"),  # metadata longer than the frame
        (struct.pack(">II", 4, 2) + b"[]img", "binary:4"),  # metadata not an object
        (struct.pack(">II", 4, 3) + b"{x}img", "binary:4"),  # metadata not JSON
        (struct.pack(">II", 4, 2) + b"\xff\xfe", "binary:4"),
        (struct.pack(">II", 3, 50) + b"12", "binary:3"),  # node id longer than the frame
        (struct.pack(">II", 3, 2) + b"\xff\xfe", "binary:3"),  # node id not UTF-8
        (struct.pack(">I", 3), "binary:3"),
    ],
)
def test_malformed_binary_is_unknown(raw: bytes, type_: str) -> None:
    msg = parse_binary(raw)
    assert isinstance(msg, Unknown)
    assert msg.type == type_


def test_unknown_binary_keeps_payload() -> None:
    assert parse_binary(struct.pack(">I", 7) + b"abc") == Unknown("binary:7", b"abc")


def test_garbage_never_raises() -> None:
    rng = random.Random(1234)
    seeds = [build_binary(f) for n in FRAME_FILES for _, f in iter_frames(load(n)) if f["frame"] == "binary"]
    texts = [json.dumps(f["json"]) for _, f in iter_frames(load("scenario_failing_job.json"))]
    for _ in range(3000):
        # Random bytes, random truncations and random bit flips of real frames.
        choice = rng.random()
        if choice < 0.3:
            raw = rng.randbytes(rng.randrange(0, 40))
        else:
            base = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            raw = bytes(base[: rng.randrange(len(base) + 1)])
        parse_binary(raw)
        text = rng.choice(texts)
        cut = text[: rng.randrange(len(text) + 1)]
        parse_text(cut)
        parse_text(raw.decode("latin-1"))
        parse_text(raw)  # bytes are accepted too
    for odd in (None, 5, object(), [1], {"type": "status"}):
        assert isinstance(parse_text(odd), Unknown)  # type: ignore[arg-type]
        assert isinstance(parse_binary(odd), Unknown)  # type: ignore[arg-type]


def test_recordings_dir_exists() -> None:
    assert isinstance(RECORDINGS, Path) and (RECORDINGS / "README.md").exists()
