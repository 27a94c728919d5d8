"""Raw workflows: what the gateway checks before it stores a user's own ComfyUI graph.

Who may send one is decided by the caller (`allow_raw_workflows`). Here: the graph's size and shape,
the operator's node class lists (GATEWAY_RAW_WORKFLOW_DENY_NODES / _ALLOW_NODES), inputs that
name files on the ComfyUI server, and string values of any node that look like server paths (a
deny list cannot know every custom node that reads a path, so the values are checked instead). Every problem is a 422 naming the node id and its class.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from app.config import Settings
from app.domain.errors import ValidationFailed

# Inputs that name a file in ComfyUI's input (or output) folder, for when no backend's /object_info
# is at hand. With one, every input whose options carry an `*_upload` flag (image_upload,
# video_upload, file_upload, audio_upload) counts too.
UPLOAD_INPUTS: dict[str, frozenset[str]] = {
    "LoadImage": frozenset({"image"}),
    "LoadImageMask": frozenset({"image"}),
    "LoadImageOutput": frozenset({"image"}),
    "LoadVideo": frozenset({"file"}),
    "Load3D": frozenset({"model_file"}),
    "Load3DAnimation": frozenset({"model_file"}),
    "LoadAudio": frozenset({"audio"}),
}


def _flagged_inputs(
    class_type: str,
    object_info: Mapping[str, Any] | None,
    known: frozenset[str],
    flagged: Callable[[str], bool],
) -> frozenset[str]:
    """`known`, plus the inputs whose options in /object_info carry a true flag `flagged` accepts."""
    found = set(known)
    info = object_info.get(class_type) if object_info else None
    if isinstance(info, Mapping) and isinstance(info.get("input"), Mapping):
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                options = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 else None
                if isinstance(options, Mapping) and any(flagged(k) and v for k, v in options.items()):
                    found.add(name)
    return frozenset(found)


def upload_inputs(class_type: str, object_info: Mapping[str, Any] | None) -> frozenset[str]:
    """The inputs of a node class that name an uploaded file."""
    return _flagged_inputs(
        class_type, object_info, UPLOAD_INPUTS.get(class_type, frozenset()), lambda k: k.endswith("_upload")
    )


# The prefix of a raw workflow's reference to one of the caller's uploads, e.g.
# `"image": "upload:2f1c8a52-..."` in a LoadImage: staged like a template's image param.
UPLOAD_REF = "upload:"
# Inputs that may take such a reference: those that load an image (uploads are images).
IMAGE_UPLOAD_INPUTS: dict[str, frozenset[str]] = {
    "LoadImage": frozenset({"image"}),
    "LoadImageMask": frozenset({"image"}),
}


def image_inputs(class_type: str, object_info: Mapping[str, Any] | None) -> frozenset[str]:
    """The inputs of a node class that load an uploaded image (`image_upload` in /object_info)."""
    return _flagged_inputs(
        class_type,
        object_info,
        IMAGE_UPLOAD_INPUTS.get(class_type, frozenset()),
        lambda k: k == "image_upload",
    )


def upload_refs(
    workflow: dict[str, Any], object_info: Mapping[str, Any] | None = None
) -> list[tuple[str, str, str]]:
    """`(node_id, input_name, upload_id)` of every `upload:<id>` reference of a checked raw workflow."""
    refs = []
    for node_id, node in workflow.items():
        for name in sorted(image_inputs(node["class_type"], object_info) & set(node["inputs"])):
            value = node["inputs"][name]
            if isinstance(value, str) and value.startswith(UPLOAD_REF):
                refs.append((node_id, name, value[len(UPLOAD_REF) :]))
    return refs


# A value that names a file outside the folders ComfyUI joins it onto: an absolute POSIX path, a
# Windows root, UNC or device path (\\server\share, \\?\...), a drive (C:\, C:/, C:name, C:), a home
# directory (~, ~/x, ~user/x), a `file:` URL, or any `..` segment. Relative names (sub/x.png) pass:
# ComfyUI's own loaders and savers keep those inside their folder.
_DRIVE = re.compile(r"^[A-Za-z]:(?:$|[\\/]|[^\s\d:])")
_HOME = re.compile(r"^~[\w.-]*(?:$|[\\/])")
_SEGMENTS = re.compile(r"[\\/]")


def looks_like_path(value: str) -> bool:
    text = value.strip()
    if not text:
        return False
    if text[0] in "/\\" or _DRIVE.match(text) or _HOME.match(text) or text[:5].lower() == "file:":
        return True
    # Windows drops trailing dots of a path part, so `...` climbs like `..`.
    return any(len(part) > 1 and set(part) == {"."} for part in (p.strip() for p in _SEGMENTS.split(text)))


def _combo_options(class_type: str, name: str, object_info: Mapping[str, Any] | None) -> frozenset[str]:
    """The choices /object_info lists for a combo input (e.g. model files); ComfyUI checks those itself."""
    info = object_info.get(class_type) if object_info else None
    inputs = info.get("input") if isinstance(info, Mapping) else None
    if not isinstance(inputs, Mapping):
        return frozenset()
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(name)
        if isinstance(spec, list | tuple) and spec and isinstance(spec[0], list | tuple):
            return frozenset(o for o in spec[0] if isinstance(o, str))
    return frozenset()


def _node_error(node_id: str, class_type: str, field: str, message: str) -> dict[str, str]:
    return {
        "field": f"workflow.{node_id}.{field}",
        "node_id": node_id,
        "class_type": class_type,
        "message": message,
    }


def check_raw_workflow(
    workflow: dict[str, Any], settings: Settings, object_info: Mapping[str, Any] | None = None
) -> list[str]:
    """Raise ValidationFailed if the graph may not run here; returns its output node ids ([] = every
    output node, decided from ComfyUI's history when the job ends: which nodes are outputs is known
    only from a backend's /object_info)."""
    _check_size_and_shape(workflow, settings)
    denied, allowed = set(settings.raw_workflow_deny_nodes), set(settings.raw_workflow_allow_nodes)
    errors: list[dict[str, str]] = []
    for node_id, node in workflow.items():
        class_type = node["class_type"]
        if class_type in denied or (allowed and class_type not in allowed):
            errors.append(
                _node_error(
                    node_id,
                    class_type,
                    "class_type",
                    f"node class {class_type!r} is not allowed in raw workflows here",
                )
            )
            continue
        # A file input may only name a file the gateway stages for this job: `upload:<id>` of one
        # of the caller's uploads, in an input that loads an image. A plain file name (which could
        # be any user's file in ComfyUI's shared input folder) or a link is refused.
        files = upload_inputs(class_type, object_info)
        _check_server_paths(errors, node_id, class_type, node["inputs"], files, object_info)
        _check_file_inputs(
            errors, node_id, class_type, node["inputs"], files, image_inputs(class_type, object_info)
        )
    if errors:
        named = ", ".join(f"{e['node_id']} ({e['class_type']})" for e in errors)
        raise ValidationFailed(
            f"The workflow uses nodes or inputs this gateway refuses: {named}.", errors=errors
        )
    return []


def _check_size_and_shape(workflow: dict[str, Any], settings: Settings) -> None:
    """Not empty, not over GATEWAY_MAX_WORKFLOW_NODES, and every node in ComfyUI's API format."""
    if not workflow:
        raise ValidationFailed("The workflow is empty.", errors=[{"field": "workflow", "message": "empty"}])
    if len(workflow) > settings.max_workflow_nodes:
        raise ValidationFailed(
            f"The workflow has {len(workflow)} nodes; at most {settings.max_workflow_nodes} are accepted.",
            errors=[{"field": "workflow", "message": f"more than {settings.max_workflow_nodes} nodes"}],
        )
    shape = [
        {"field": f"workflow.{node_id}", "message": "a node needs a string class_type and an inputs object"}
        for node_id, node in workflow.items()
        if not isinstance(node, dict)
        or not isinstance(node.get("class_type"), str)
        or not isinstance(node.get("inputs"), dict)
    ]
    if shape:
        raise ValidationFailed("The workflow is not in ComfyUI's API format.", errors=shape)


def _check_server_paths(
    errors: list[dict[str, str]],
    node_id: str,
    class_type: str,
    inputs: dict[str, Any],
    files: frozenset[str],
    object_info: Mapping[str, Any] | None,
) -> None:
    """Any node, known or not (custom nodes take free-text paths: VHS_LoadVideoPath...), may not be
    given a server path; file inputs are checked apart, and a combo's own choices are ComfyUI's to check."""
    for name, value in sorted(inputs.items()):
        if (
            name not in files
            and isinstance(value, str)
            and looks_like_path(value)
            and value not in _combo_options(class_type, name, object_info)
        ):
            errors.append(
                _node_error(
                    node_id,
                    class_type,
                    f"inputs.{name}",
                    f"input {name!r} of {class_type!r} looks like a path on the server (absolute, "
                    "drive, home, file: or '..'); raw workflows cannot name server paths",
                )
            )


def _check_file_inputs(
    errors: list[dict[str, str]],
    node_id: str,
    class_type: str,
    inputs: dict[str, Any],
    files: frozenset[str],
    images: frozenset[str],
) -> None:
    """A file input must be an image input given as `upload:<id>`."""
    for name in sorted(files & set(inputs)):
        value = inputs[name]
        if name in images and isinstance(value, str) and value.startswith(UPLOAD_REF):
            continue
        hint = (
            f'give one of your uploads as "{UPLOAD_REF}<upload id>"'
            if name in images
            else "raw workflows cannot use server files of this kind"
        )
        errors.append(
            _node_error(
                node_id,
                class_type,
                f"inputs.{name}",
                f"input {name!r} of {class_type!r} names a file on the ComfyUI server; {hint}",
            )
        )
