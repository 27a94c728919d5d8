"""Outputs and uploads in S3-compatible object storage (AWS S3, MinIO, Ceph, R2...), via aiobotocore.

Writes stream: bytes are gathered into parts of `part_bytes` (S3's minimum part is 5 MiB) and
sent as a multipart upload, so memory holds one part at most; a file smaller than one part is a
single PUT. A failed write aborts its multipart upload, so no half object is ever visible.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from app.storage.base import RangedObject, RangeNotSatisfiable, StoredObject

__all__ = ["RangeNotSatisfiable", "S3Storage"]


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_bytes = max(part_bytes, 5 * 1024 * 1024)
        self._client_kwargs: dict[str, Any] = {
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
            "config": Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
        }
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        self._client = await self._stack.enter_async_context(
            get_session().create_client("s3", **self._client_kwargs)
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key: {key!r}")
        return self.prefix + key

    # ---- the Storage interface ---------------------------------------------------------------

    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredObject:
        full = self._key(key)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= self.part_bytes:
                    if upload_id is None:
                        created = await self._client.create_multipart_upload(Bucket=self.bucket, Key=full)
                        upload_id = created["UploadId"]
                    body, buffer = bytes(buffer[: self.part_bytes]), buffer[self.part_bytes :]
                    part = await self._client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=len(parts) + 1, Body=body
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": part["ETag"]})
            if upload_id is None:
                await self._client.put_object(Bucket=self.bucket, Key=full, Body=bytes(buffer))
            else:
                if buffer:
                    part = await self._client.upload_part(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=len(parts) + 1,
                        Body=bytes(buffer),
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": part["ETag"]})
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id
                    )
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    async def read_stream(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from None
            raise
        async with resp["Body"] as body:
            while chunk := await body.read(chunk_size):
                yield chunk

    async def delete(self, key: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def delete_prefix(self, prefix: str) -> None:
        full = self._key(prefix.rstrip("/")) + "/"
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                await self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    async def exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    # ---- serving -----------------------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        return None

    async def presigned_url(self, key: str, *, content_type: str, disposition: str, expires: int) -> str:
        """A short-lived GET URL; the object's type and file name are set on the response."""
        return await self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
            },
            ExpiresIn=expires,
        )

    async def get_range(self, key: str, range_header: str | None) -> RangedObject:
        """The object, or the part a `Range` header asks for (S3 applies it); FileNotFoundError,
        or RangeNotSatisfiable with the object's size."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if range_header:
            kwargs["Range"] = range_header
        try:
            resp = await self._client.get_object(**kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from None
            if code == "InvalidRange":
                head = await self._client.head_object(Bucket=self.bucket, Key=self._key(key))
                raise RangeNotSatisfiable(int(head["ContentLength"])) from None
            raise
        status = resp["ResponseMetadata"]["HTTPStatusCode"]
        headers = {"Content-Length": str(resp["ContentLength"]), "Accept-Ranges": "bytes"}
        if resp.get("ContentRange"):
            headers["Content-Range"] = resp["ContentRange"]

        async def body() -> AsyncIterator[bytes]:
            async with resp["Body"] as stream:
                while chunk := await stream.read(256 * 1024):
                    yield chunk

        return RangedObject(status=status, headers=headers, body=body())


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
