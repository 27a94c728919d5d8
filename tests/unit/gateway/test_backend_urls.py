"""Backend URLs as admins type them become one normal form, so a duplicate is recognised as one."""

from __future__ import annotations

import pytest

from app.domain.backend_registry import normalize_url
from app.domain.errors import ValidationFailed


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("http://10.0.0.5:8188/", "http://10.0.0.5:8188"),
        ("  HTTP://GPU-Box.local:8188  ", "http://gpu-box.local:8188"),
        ("https://comfy.example.com", "https://comfy.example.com"),
        ("http://[::1]:8188/", "http://[::1]:8188"),
        ("http://proxy:8080/comfyui/", "http://proxy:8080/comfyui"),
    ],
)
def test_normal_form(given: str, normal: str) -> None:
    assert normalize_url(given) == normal


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ws://10.0.0.5:8188", "http"),
        ("10.0.0.5:8188", "http"),
        ("http://:8188", "host"),
        ("http://10.0.0.5:0x50", "not a valid URL"),
        ("http://admin:pw@10.0.0.5:8188", "credentials"),
        ("http://10.0.0.5:8188/?token=1", "query"),
        ("http://10.0.0.5:8188/pa th", "spaces"),
    ],
)
def test_refused_with_the_reason(given: str, says: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        normalize_url(given)
    assert says in exc.value.detail and exc.value.extensions["errors"][0]["field"] == "url"
