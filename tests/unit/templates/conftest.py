from __future__ import annotations

from typing import Any

import pytest

from .helpers import recording


@pytest.fixture(scope="session")
def object_info_full() -> dict[str, Any]:
    return recording("object_info_full.json")


@pytest.fixture(scope="session")
def object_info_selected() -> dict[str, Any]:
    return recording("object_info_selected.json")
