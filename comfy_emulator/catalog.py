"""The node classes an instance has: their `/object_info` definitions, with live option lists.

Everything the emulator knows about a node class (inputs, types, ranges, outputs, whether it is
an output node) comes from the recorded `/object_info` of ComfyUI, so validation and the served
`/object_info` cannot disagree. Two kinds of COMBO lists are filled in per instance, as ComfyUI
fills them from its folders: model lists (from `EmulatorConfig.models`) and the image files of
the input directory (LoadImage, LoadImageMask).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: (class, input) -> model folder, for the loader inputs whose options are a folder's files.
MODEL_INPUTS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLora", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLoraModelOnly", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CreateHookLora", "lora_name"): "loras",
    ("CreateHookLoraModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name1"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name2"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name4"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    ("ModelPatchLoader", "name"): "model_patches",
    ("DiffusersLoader", "model_path"): "diffusers",
}

#: The model folders ComfyUI 0.3.64 reports on `GET /models`, in its order.
MODEL_FOLDERS: list[str] = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
]  # fmt: skip

#: Classes whose `image` COMBO lists the image files of the input directory.
INPUT_IMAGE_NODES: tuple[str, ...] = ("LoadImage", "LoadImageMask")


@functools.lru_cache(maxsize=8)
def _load_object_info(path: str) -> dict[str, Any]:
    """Parsed once per path and shared by all instances: treat as read-only."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    category: str  # "required" | "optional"
    type: Any  # a type name ("INT", "IMAGE", "COMBO", ...) or a list of options
    extra: dict[str, Any]

    @property
    def config(self) -> list[Any]:
        """The `input_config` ComfyUI puts into validation errors: `[type, extra]`."""
        return [self.type, self.extra]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    inputs: dict[str, InputSpec]  # required then optional, in declared order
    hidden: dict[str, str]
    outputs: list[Any]
    output_node: bool

    @property
    def required(self) -> list[InputSpec]:
        return [i for i in self.inputs.values() if i.category == "required"]


def _node_spec(name: str, info: Mapping[str, Any]) -> NodeSpec:
    inputs: dict[str, InputSpec] = {}
    declared = info.get("input", {})
    for category in ("required", "optional"):
        for input_name, conf in (declared.get(category) or {}).items():
            if not isinstance(conf, (list, tuple)) or not conf:
                conf = ["*"]
            extra = conf[1] if len(conf) > 1 and isinstance(conf[1], dict) else {}
            inputs[input_name] = InputSpec(input_name, category, conf[0], extra)
    return NodeSpec(
        name=name,
        inputs=inputs,
        hidden=dict(declared.get("hidden") or {}),
        outputs=list(info.get("output") or []),
        output_node=bool(info.get("output_node")),
    )


class NodeCatalog:
    """The node set of one instance, and the `/object_info` body it serves."""

    def __init__(
        self,
        object_info_path: str | Path,
        *,
        models: Mapping[str, list[str]],
        allowlist: Collection[str] | None = None,
        extra_nodes: Mapping[str, Mapping[str, Any]] | None = None,
        list_input_images: Callable[[], list[str]],
    ) -> None:
        base = _load_object_info(str(object_info_path))
        if allowlist is not None:
            allowed = set(allowlist)
            defs = {k: v for k, v in base.items() if k in allowed}
        else:
            defs = dict(base)
        for name, info in (extra_nodes or {}).items():
            entry = copy.deepcopy(dict(info))
            entry.setdefault("name", name)
            entry.setdefault("input", {"required": {}})
            entry.setdefault("output", [])
            entry.setdefault("output_node", False)
            defs[name] = entry
        self.models: dict[str, list[str]] = {k: list(v) for k, v in models.items()}
        # The definitions before model lists are filled in, to fill them again when they change.
        self._unfilled = defs
        self._list_input_images = list_input_images
        self._build()

    def _build(self) -> None:
        defs = dict(self._unfilled)
        for (cls, input_name), folder in MODEL_INPUTS.items():
            if cls in defs:
                defs[cls] = self._with_options(
                    defs[cls], input_name, self.model_options(folder, defs[cls], input_name)
                )
        self._static = defs
        self._specs: dict[str, NodeSpec] = {name: _node_spec(name, info) for name, info in defs.items()}
        self._cache_key: tuple[str, ...] | None = None
        self._cache_defs: dict[str, Any] = {}
        self._cache_body: bytes = b""

    def set_models(self, folder: str, files: list[str]) -> None:
        """Change a model folder's files while running, as when a file is copied into a live
        ComfyUI: its `/object_info` and `/prompt` validation follow from the next request."""
        self.models[folder] = list(files)
        self._build()

    # -- model lists --------------------------------------------------------------------------

    def model_options(
        self, folder: str, info: Mapping[str, Any] | None = None, input_name: str = ""
    ) -> list[str]:
        files = list(self.models.get(folder, []))
        if folder == "vae" and info is not None:
            # VAELoader also offers built-in entries such as "pixel_space".
            for opt in _options_of(info, input_name):
                if opt not in files:
                    files.append(opt)
        return files

    @staticmethod
    def _with_options(info: Mapping[str, Any], input_name: str, options: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(dict(info))
        for category in ("required", "optional"):
            conf = (out.get("input", {}).get(category) or {}).get(input_name)
            if conf is None:
                continue
            if conf[0] == "COMBO":
                conf[1]["options"] = list(options)
            else:
                conf[0] = list(options)
        return out

    # -- lookups ------------------------------------------------------------------------------

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self._specs

    def spec(self, class_type: str) -> NodeSpec:
        """The spec of a class. The input-image lists of LoadImage & co. are not in it: those
        inputs are checked against the input directory instead (as ComfyUI's VALIDATE_INPUTS)."""
        return self._specs[class_type]

    def names(self) -> list[str]:
        return list(self._static)

    def definitions(self) -> dict[str, Any]:
        """The `/object_info` body, as a dict (treat as read-only)."""
        self._refresh()
        return self._cache_defs

    def body(self) -> bytes:
        """The `/object_info` body, serialized (it is 0.5 MB: built only when it changes)."""
        self._refresh()
        return self._cache_body

    def _refresh(self) -> None:
        files = tuple(self._list_input_images())
        if files == self._cache_key and self._cache_body:
            return
        defs = dict(self._static)
        for cls in INPUT_IMAGE_NODES:
            if cls in defs:
                defs[cls] = self._with_options(defs[cls], "image", list(files))
        self._cache_defs = defs
        self._cache_body = json.dumps(defs).encode()
        self._cache_key = files


def _options_of(info: Mapping[str, Any], input_name: str) -> list[str]:
    for category in ("required", "optional"):
        conf = (info.get("input", {}).get(category) or {}).get(input_name)
        if conf is None:
            continue
        if conf[0] == "COMBO":
            return list(conf[1].get("options", []))
        if isinstance(conf[0], list):
            return list(conf[0])
    return []
