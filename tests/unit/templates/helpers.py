from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
# The recordings may move into the emulator package; accept either place.
_RECORDING_DIRS = [REPO / "comfy_emulator" / "data", REPO / "tests" / "data" / "recordings"]


def recording(name: str) -> Any:
    for d in _RECORDING_DIRS:
        p = d / name
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"recording {name} not found in {_RECORDING_DIRS}")


# The graph of the recorded blur scenario (scenario_basic_blur.json), as posted to ComfyUI.
BLUR_WORKFLOW: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16744448},
    },
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "harness_blur"}},
}


def doc_dict(params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A raw template document over the blur graph."""
    d: dict[str, Any] = {"description": "test", "workflow": copy.deepcopy(BLUR_WORKFLOW)}
    d["params"] = params if params is not None else {}
    d.update(extra)
    return d


def param(type_: str, bind: str | list[str] = "1.inputs.width", **kw: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"type": type_, "bind": [bind] if isinstance(bind, str) else bind}
    p.update(kw)
    return p
