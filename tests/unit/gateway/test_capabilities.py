import json
from pathlib import Path

import pytest

from app.dispatch.capabilities import Capabilities, checkpoint_of
from app.templates import load_builtin, render, resolve_params

OBJECT_INFO = json.loads(
    (Path(__file__).parents[3] / "comfy_emulator" / "data" / "object_info_full.json").read_text()
)


@pytest.fixture(scope="module")
def recorded() -> Capabilities:
    return Capabilities.from_object_info(OBJECT_INFO)


def rendered(name: str, **params) -> dict:  # noqa: ANN003
    doc = load_builtin()[name]
    return render(doc, resolve_params(doc, params))


def test_weight_free_templates_run_on_the_recorded_cpu_server(recorded: Capabilities) -> None:
    assert recorded.missing(rendered("blur")) == []
    assert recorded.missing(rendered("resize")) == []


def test_a_checkpoint_the_backend_does_not_have_is_named(recorded: Capabilities) -> None:
    # The recorded server had no model files at all: its checkpoint list is empty.
    reasons = recorded.missing(rendered("txt2img", prompt="x"))
    assert reasons == ["'v1-5-pruned-emaonly.safetensors' for CheckpointLoaderSimple.ckpt_name (node 4)"]
    with_model = dict(OBJECT_INFO)
    loader = json.loads(json.dumps(OBJECT_INFO["CheckpointLoaderSimple"]))
    spec = loader["input"]["required"]["ckpt_name"]
    if isinstance(spec[0], list):
        spec[0] = ["v1-5-pruned-emaonly.safetensors"]
    else:
        spec[1]["options"] = ["v1-5-pruned-emaonly.safetensors"]
    with_model["CheckpointLoaderSimple"] = loader
    assert Capabilities.from_object_info(with_model).missing(rendered("txt2img", prompt="x")) == []


def test_missing_node_classes_and_bad_choices(recorded: Capabilities) -> None:
    workflow = {
        "1": {"class_type": "SomeCustomNode", "inputs": {}},
        "2": {"class_type": "ImageScale", "inputs": {"upscale_method": "warp-drive", "image": ["1", 0]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "staged-later.png"}},
    }
    assert recorded.missing(workflow) == [
        "node class 'SomeCustomNode'",
        "'warp-drive' for ImageScale.upscale_method (node 2)",
    ]  # the LoadImage file is uploaded at dispatch, so it is not a capability


def test_checkpoint_of() -> None:
    assert checkpoint_of(rendered("txt2img", prompt="x")) == "v1-5-pruned-emaonly.safetensors"
    assert checkpoint_of(rendered("blur")) is None
