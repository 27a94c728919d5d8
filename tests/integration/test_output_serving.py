"""Serving outputs safely: bad signatures, headers that keep a file from acting in the gateway's
origin, caching no longer than a signed URL lives, and bounded, bomb-proof conversions."""

from __future__ import annotations

import struct
import time
import uuid
import zlib
from urllib.parse import parse_qs, urlsplit

from app.db.models import Output

from .test_outputs_io import finished_blur, stored


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with next to no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


async def plant_output(gw, job_id: str, data: bytes, filename: str, content_type: str) -> str:  # noqa: ANN001
    """An output of a finished job with these bytes (as a custom node could write them); its signed URL."""
    output_id = str(uuid.uuid4())
    key = f"{job_id}/{output_id}{filename[filename.rfind('.') :]}"

    async def one():  # noqa: ANN202
        yield data

    obj = await gw.state.storage.write_stream(key, one())
    async with gw.state.sessionmaker() as session:
        session.add(
            Output(
                id=output_id,
                job_id=job_id,
                node_id="9",
                kind="images",
                filename=filename,
                content_type=content_type,
                size=obj.size,
                sha256=obj.sha256,
                storage_key=key,
            )
        )
        await session.commit()
    return gw.state.signer.url(job_id, output_id)


async def test_a_non_ascii_signature_is_refused_like_any_bad_one(gateway) -> None:  # noqa: ANN001
    out = (await finished_blur(gateway))["outputs"][0]
    bare, query = out["url"].split("?")
    expires = parse_qs(query)["expires"][0]
    for signature in ("%C3%A9", "%E2%82%AC" * 10):
        resp = await gateway.http.get(f"{bare}?expires={expires}&signature={signature}")
        assert resp.status_code == 401, (signature, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    # A NUL in any query parameter is refused at the edge, naming it, before any route runs.
    resp = await gateway.http.get(f"{bare}?expires={expires}&signature=abc%00")
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "signature", resp.text


async def test_outputs_are_nosniff_sandboxed_and_cached_no_longer_than_their_url(gateway) -> None:  # noqa: ANN001
    final = await finished_blur(gateway)
    out = final["outputs"][0]
    resp = await gateway.http.get(out["url"])
    assert resp.status_code == 200
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in resp.headers["content-security-policy"]
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    expires = int(parse_qs(urlsplit(out["url"]).query)["expires"][0])
    directives = dict((d.strip().split("=") + [""])[:2] for d in resp.headers["cache-control"].split(","))
    assert "max-age" in directives
    # A cache may keep the file at most until the URL stops working, not a year.
    assert 0 < int(directives["max-age"]) <= expires - int(time.time()) + 1
    keyed = await gateway.http.get(out["url"].split("?")[0], headers=gateway.admin)
    assert (
        keyed.headers["x-content-type-options"] == "nosniff"
        and "sandbox" in keyed.headers["content-security-policy"]
    )

    # An SVG (a stock output type) can hold script: it is a download, never a page of the gateway's origin.
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'
    url = await plant_output(gateway, final["id"], svg, "drawing.svg", "image/svg+xml")
    served = await gateway.http.get(url)
    assert served.status_code == 200 and served.content == svg
    assert served.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in served.headers["content-security-policy"]
    assert served.headers["x-content-type-options"] == "nosniff"
    # An ordinary image stays inline, so an <img src> and a browser tab still show it.
    assert resp.headers["content-disposition"].startswith("inline;")


async def test_a_decompression_bomb_is_not_converted_and_answers_4xx(gateway) -> None:  # noqa: ANN001
    final = await finished_blur(gateway)
    for width, height in ((30_000, 30_000), (10_000, 10_000)):
        url = await plant_output(gateway, final["id"], png_claiming(width, height), "bomb.png", "image/png")
        resp = await gateway.http.get(url + "&format=webp")
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["errors"][0]["field"] == "format"
        # The file itself is still served as it is.
        assert (await gateway.http.get(url)).status_code == 200
    # A damaged image is a 422 too.
    url = await plant_output(gateway, final["id"], png_claiming(64, 64)[:-20], "broken.png", "image/png")
    resp = await gateway.http.get(url + "&format=jpeg")
    assert resp.status_code == 422, resp.text


async def test_converted_copies_of_an_output_are_few_whatever_is_asked(gateway) -> None:  # noqa: ANN001
    final = await finished_blur(gateway)
    out = final["outputs"][0]
    root = gateway.state.settings.storage_dir / final["id"]
    levels = gateway.state.settings.conversion_qualities
    for fmt in ("webp", "jpeg"):
        for quality in range(1, 101, 3):
            resp = await gateway.http.get(out["url"] + f"&format={fmt}&quality={quality}")
            assert resp.status_code == 200, resp.text
    # The original plus at most one copy per format and quality level.
    assert 1 < len(await stored(root)) <= 1 + 2 * len(levels)


async def test_a_job_whose_outputs_exceed_the_cap_fails_and_keeps_no_file(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], max_job_output_bytes=50))
    await gw.wait_ready()
    job = (await gw.generate({"template": "blur", "params": {"width": 64, "height": 48}})).json()
    final = await gw.wait(job["id"])
    assert final["status"] == "failed", final
    assert final["error"]["type"] == "output_too_large" and final["outputs"] == []
    assert "50 bytes" in final["error"]["message"]
    assert await stored(gw.state.settings.storage_dir / job["id"]) == []


async def test_small_and_large_outputs_are_served_alike(gateway) -> None:  # noqa: ANN001
    """A small file is sent in one piece from the event loop, a large one by FileResponse: a client
    cannot tell which, whole or in ranges, fresh or conditional."""
    from app.api.outputs import SMALL_FILE

    final = await finished_blur(gateway)
    for size in (1000, SMALL_FILE + 1):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        url = await plant_output(gateway, final["id"], data, "blob.bin", "application/octet-stream")
        whole = await gateway.http.get(url)
        assert whole.status_code == 200 and whole.content == data, size
        headers = whole.headers
        assert headers["content-length"] == str(size) and headers["accept-ranges"] == "bytes"
        assert headers["content-type"] == "application/octet-stream" and headers["last-modified"]
        assert headers["etag"].strip('"') and headers["x-content-type-options"] == "nosniff"
        part = await gateway.http.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20], size
        assert part.headers["content-range"] == f"bytes 10-19/{size}"
        again = await gateway.http.get(url, headers={"If-None-Match": headers["etag"]})
        assert again.status_code == 304 and again.content == b"", size
