"""Outputs and uploads in S3-compatible storage, against a real S3 server (moto's standalone server)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiobotocore.session import get_session

from app.storage.s3 import RangeNotSatisfiable, S3Storage

from .test_uploads import img2img, png, upload

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}


@pytest.fixture
async def bucket(s3_server: str) -> AsyncIterator[str]:
    name = f"gw-{uuid.uuid4().hex[:12]}"
    async with get_session().create_client("s3", endpoint_url=s3_server, **CREDENTIALS) as s3:
        await s3.create_bucket(Bucket=name)
    yield name


async def keys_in(s3_server: str, bucket: str) -> list[str]:
    async with get_session().create_client("s3", endpoint_url=s3_server, **CREDENTIALS) as s3:
        page = await s3.list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in page.get("Contents", []))


async def test_large_objects_go_up_in_parts_and_come_back_whole(s3_server: str, bucket: str) -> None:
    storage = S3Storage(
        bucket=bucket,
        prefix="gw",
        endpoint_url=s3_server,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
        part_bytes=5 * 1024 * 1024,
    )
    await storage.start()
    try:
        data = os.urandom(11 * 1024 * 1024 + 123)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 64 * 1024):
                yield data[i : i + 64 * 1024]

        stored = await storage.write_stream("job1/big.bin", chunks())
        assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert await keys_in(s3_server, bucket) == ["gw/job1/big.bin"]
        head = await storage._client.head_object(Bucket=bucket, Key="gw/job1/big.bin")  # noqa: SLF001
        assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
        assert b"".join([c async for c in storage.read_stream("job1/big.bin")]) == data

        part = await storage.get_range("job1/big.bin", "bytes=100-199")
        assert part.status == 206 and b"".join([c async for c in part.body]) == data[100:200]
        with pytest.raises(RangeNotSatisfiable):
            await storage.get_range("job1/big.bin", f"bytes={len(data) + 5}-")

        small = await storage.write_stream("job1/small.txt", _one(b"hello"))
        assert small.size == 5 and await storage.exists("job1/small.txt")
        await storage.delete_prefix("job1/")
        assert await keys_in(s3_server, bucket) == []
        assert not await storage.exists("job1/small.txt")
        with pytest.raises(FileNotFoundError):
            [c async for c in storage.read_stream("job1/big.bin")]
    finally:
        await storage.close()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def s3_settings(make_settings, emulator, s3_server: str, bucket: str, serve: str):  # noqa: ANN001, ANN201
    return make_settings(
        comfyui_urls=[emulator.base_url],
        storage_backend="s3",
        s3_endpoint_url=s3_server,
        s3_bucket=bucket,
        s3_prefix="outputs",
        s3_region="us-east-1",
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_serve=serve,
    )


async def test_gateway_on_s3_redirects_to_presigned_urls(
    emulator, make_settings, gateway_factory, s3_server, bucket
) -> None:  # noqa: ANN001
    gw = await gateway_factory(s3_settings(make_settings, emulator, s3_server, bucket, "redirect"))
    await gw.wait_ready()
    data = png(48, 32, (5, 6, 7))
    up = (await upload(gw, data, gw.admin)).json()
    job = (await gw.generate(img2img(up["id"]))).json()
    final = await gw.wait(job["id"])
    assert final["status"] == "succeeded", final
    # The input went from the bucket to the backend.
    assert (emulator.input_dir / f"gw_{job['id']}_image.png").read_bytes() == data
    out = final["outputs"][0]
    resp = await gw.http.get(out["url"])
    assert resp.status_code == 307 and resp.headers["cache-control"] == "private, no-store"
    async with httpx.AsyncClient() as client:
        got = await client.get(resp.headers["location"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert hashlib.sha256(got.content).hexdigest() == out["sha256"]
        part = await client.get(resp.headers["location"], headers={"Range": "bytes=0-7"})
        assert part.status_code == 206 and part.content == b"\x89PNG\r\n\x1a\n"
    assert (await gw.http.get(out["url"], headers={"If-None-Match": f'"{out["sha256"]}"'})).status_code == 304

    keys = await keys_in(s3_server, bucket)
    assert any(k.startswith(f"outputs/{job['id']}/") for k in keys) and any(
        k.startswith("outputs/uploads/") for k in keys
    )
    assert (await gw.http.delete(f"/v1/jobs/{job['id']}", headers=gw.admin)).status_code == 204
    assert not any(k.startswith(f"outputs/{job['id']}/") for k in await keys_in(s3_server, bucket))


async def test_gateway_on_s3_streams_with_ranges(
    emulator, make_settings, gateway_factory, s3_server, bucket
) -> None:  # noqa: ANN001
    gw = await gateway_factory(s3_settings(make_settings, emulator, s3_server, bucket, "stream"))
    await gw.wait_ready()
    final = await gw.wait(
        (await gw.generate({"template": "blur", "params": {"width": 40, "height": 40}})).json()["id"]
    )
    out = final["outputs"][0]
    full = await gw.http.get(out["url"])
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == out["sha256"]
    assert full.headers["content-type"] == "image/png" and full.headers["etag"] == f'"{out["sha256"]}"'
    part = await gw.http.get(out["url"], headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == full.content[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{out['size']}"
    beyond = await gw.http.get(out["url"], headers={"Range": f"bytes={out['size'] + 1}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{out['size']}"
    webp = await gw.http.get(out["url"] + "&format=webp")
    assert webp.status_code == 200 and webp.content[:4] == b"RIFF"
