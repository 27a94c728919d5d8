"""What a backend can run, read from its own `/object_info`.

A backend can run a workflow when it has every node class the workflow uses and accepts every
choice the workflow makes from a list: model files (checkpoints, LoRAs, VAEs, upscalers...) are
COMBO inputs whose options are the files on that backend, and so are samplers and the like.
Image inputs (LoadImage) are left out: their files are uploaded to the chosen backend at dispatch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _combo_options(spec: Any) -> list[str] | None:
    """The options of a COMBO input spec, in either of ComfyUI's two forms, else None.

    Old form: `[["a.safetensors", "b.safetensors"], {...}]`; new form: `["COMBO", {"options": [...]}]`.
    """
    if not isinstance(spec, list) or not spec:
        return None
    config = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if config.get("image_upload") or config.get("upload"):
        return None
    if isinstance(spec[0], list):
        return [str(v) for v in spec[0]]
    if spec[0] == "COMBO" and isinstance(config.get("options"), list):
        return [str(v) for v in config["options"]]
    return None


@dataclass(frozen=True)
class Capabilities:
    nodes: frozenset[str]
    # (class_type, input name) -> the values that input accepts on this backend
    choices: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_object_info(cls, info: Mapping[str, Any]) -> Capabilities:
        choices: dict[tuple[str, str], frozenset[str]] = {}
        for class_type, definition in info.items():
            inputs = (definition or {}).get("input") or {}
            for section in ("required", "optional"):
                for name, spec in (inputs.get(section) or {}).items():
                    options = _combo_options(spec)
                    if options is not None:
                        choices[(class_type, name)] = frozenset(options)
        return cls(nodes=frozenset(info), choices=choices)

    def to_json(self) -> dict[str, Any]:
        """A JSON form, sorted so that equal capabilities give equal documents (see `digest`)."""
        return {
            "nodes": sorted(self.nodes),
            "choices": [[c, n, sorted(v)] for (c, n), v in sorted(self.choices.items())],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Capabilities:
        return cls(
            nodes=frozenset(doc.get("nodes") or ()),
            choices={(c, n): frozenset(v) for c, n, v in doc.get("choices") or ()},
        )

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), separators=(",", ":")).encode()).hexdigest()

    def missing(self, workflow: Mapping[str, Any]) -> list[str]:
        """Why this backend cannot run the workflow; empty when it can."""
        reasons: list[str] = []
        for node_id, node in workflow.items():
            if not isinstance(node, Mapping):
                continue
            class_type = node.get("class_type")
            if class_type not in self.nodes:
                reasons.append(f"node class {class_type!r}")
                continue
            for name, value in (node.get("inputs") or {}).items():
                allowed = self.choices.get((class_type, name))
                if allowed is not None and isinstance(value, str) and value not in allowed:
                    reasons.append(f"{value!r} for {class_type}.{name} (node {node_id})")
        return reasons


def checkpoint_of(workflow: Mapping[str, Any]) -> str | None:
    """The checkpoint a workflow loads, to prefer a backend that has it in memory already."""
    for node in workflow.values():
        if isinstance(node, Mapping):
            inputs = node.get("inputs") or {}
            value = inputs.get("ckpt_name") or inputs.get("unet_name")
            if isinstance(value, str):
                return value
    return None


# The model-list inputs of the stock loaders, by the kind of file they list.
MODEL_KINDS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vaes",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("ControlNetLoader", "control_net_name"): "controlnets",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
}


def models_by_kind(capabilities: Capabilities) -> dict[str, list[str]]:
    """The model files a backend offers, per kind, for people to read (routing uses `choices`)."""
    return {
        kind: sorted(capabilities.choices[key])
        for key, kind in MODEL_KINDS.items()
        if key in capabilities.choices
    }
