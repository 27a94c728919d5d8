"""The storage the settings ask for (GATEWAY_STORAGE_BACKEND): built and started by the lifespan."""

from __future__ import annotations

from app.config import Settings
from app.storage.local import LocalStorage
from app.storage.s3 import S3Storage


def build_storage(settings: Settings) -> LocalStorage | S3Storage:
    if settings.storage_backend == "s3":
        assert settings.s3_bucket  # checked by Settings
        return S3Storage(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key.get_secret_value()
            if settings.s3_secret_access_key
            else None,
            part_bytes=settings.s3_part_bytes,
        )
    return LocalStorage(settings.storage_dir)
