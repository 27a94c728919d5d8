"""Which node inputs name server files: from a backend's /object_info, or a built-in list without one."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.domain.errors import ValidationFailed
from app.domain.workflows import check_raw_workflow, upload_inputs


def test_upload_inputs_come_from_object_info_flags_and_the_builtin_list() -> None:
    object_info = {
        # A custom node pack's loader: known only from its *_upload flag.
        "VHS_LoadVideo": {
            "input": {"required": {"video": [["a.mp4"], {"video_upload": True}], "frames": ["INT", {}]}}
        },
        "LoadImageMask": {
            "input": {
                "required": {"image": [["x.png"], {"image_upload": True}], "channel": [["alpha", "red"]]}
            }
        },
    }
    assert upload_inputs("VHS_LoadVideo", object_info) == {"video"}
    # Only the upload input; the node's other COMBO (channel) is an ordinary choice.
    assert upload_inputs("LoadImageMask", object_info) == {"image"}
    assert upload_inputs("LoadImage", None) == {"image"}
    assert upload_inputs("VHS_LoadVideo", None) == set()
    assert upload_inputs("KSampler", object_info) == set()


def test_a_custom_upload_input_is_refused_only_when_set() -> None:
    settings = Settings(_env_file=None)
    info = {"VHS_LoadVideo": {"input": {"required": {"video": [["a.mp4"], {"video_upload": True}]}}}}
    graph = {"1": {"class_type": "VHS_LoadVideo", "inputs": {"video": "someone_elses.mp4"}}}
    with pytest.raises(ValidationFailed) as exc:
        check_raw_workflow(graph, settings, info)
    assert exc.value.extensions["errors"][0]["field"] == "workflow.1.inputs.video"
    assert check_raw_workflow({"1": {"class_type": "VHS_LoadVideo", "inputs": {}}}, settings, info) == []


def test_a_path_like_value_passes_only_as_one_of_its_combos_own_choices() -> None:
    settings = Settings(_env_file=None)
    # A model list as a backend reports it: ComfyUI checks a combo's value against it itself.
    info = {
        "CheckpointLoaderSimple": {
            "input": {"required": {"ckpt_name": [["../shared/sd15.safetensors", "sd15.safetensors"]]}}
        }
    }
    listed = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "../shared/sd15.safetensors"}}
    }
    assert check_raw_workflow(listed, settings, info) == []
    unlisted = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "../../etc/passwd"}}}
    for object_info in (info, None):
        with pytest.raises(ValidationFailed) as exc:
            check_raw_workflow(unlisted, settings, object_info)
        assert exc.value.extensions["errors"][0]["field"] == "workflow.1.inputs.ckpt_name"
