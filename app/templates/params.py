"""A template's params: their JSON Schema, their validation and resolution, and rendering.

- :func:`params_schema` gives the JSON Schema (draft 2020-12) clients see.
- :func:`resolve_params` validates a job's params and fills defaults (drawing random seeds).
- :func:`render` writes resolved params into a copy of the workflow.
- :func:`output_nodes` says which nodes' files a job returns.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

from ._values import MAX_IMAGE_REF_LENGTH, RANDOM_SEED_LIMIT, constraint_problems, type_problem
from .checks import is_output_class
from .document import ParamSpec, TemplateDocument
from .errors import ParamsInvalid, TemplateInvalid

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: The JSON Schema ``format`` of ``image`` params.
IMAGE_FORMAT = "comfy-gateway-image"

#: Node classes that are output nodes in stock ComfyUI (``output_node: true`` in the recorded
#: /object_info of ComfyUI 0.3.64, plus the audio nodes, which that recording could not load).
#: Used by :func:`output_nodes` when no /object_info is at hand.
KNOWN_OUTPUT_CLASSES: frozenset[str] = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveLatent",
        "MaskPreview",
        "CheckpointSave",
        "CLIPSave",
        "VAESave",
        "ModelSave",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveSVGNode",
        "ImageOnlyCheckpointSave",
        "SaveLoRANode",
        "LossGraphNode",
        "LoraSave",
        "Preview3D",
        "Preview3DAnimation",
        "SaveWEBM",
        "SaveVideo",
        "SaveGLB",
        "PreviewAny",
        "TripoTextToModelNode",
        "TripoImageToModelNode",
        "TripoMultiviewToModelNode",
        "TripoTextureNode",
        "TripoRefineNode",
        "TripoRigNode",
        "TripoRetargetNode",
        "TripoConversionNode",
        "SaveImageWebsocket",
        # comfy_extras/nodes_audio.py (needs torchaudio)
        "SaveAudio",
        "SaveAudioMP3",
        "SaveAudioOpus",
        "PreviewAudio",
    }
)

_IMAGE_NOTE = "An image: an upload id, an http(s) URL or a data: URI."

_SCHEMA_KEYWORDS = ("minimum", "maximum", "multipleOf", "enum", "minLength", "maxLength")

_system_rng = random.SystemRandom()


# ---- schema ------------------------------------------------------------------------------------


def _random_note(spec: ParamSpec) -> str:
    rng = spec.random_range()
    assert rng is not None  # guaranteed by ParamSpec validation
    lo, hi, step = rng
    if (lo, hi, step) == (0, RANDOM_SEED_LIMIT - 1, 1):
        where = "a random integer in [0, 2^53)"
    elif step == 1:
        where = f"a random integer in [{lo}, {hi}]"
    else:
        where = f"a random multiple of {step} in [{lo}, {hi}]"
    return f"If omitted, {where} is drawn for each job."


def param_schema(spec: ParamSpec) -> dict[str, Any]:
    """The JSON Schema of one param."""
    notes = [spec.description] if spec.description else []
    if spec.type == "image":
        schema: dict[str, Any] = {
            "type": "string",
            "format": IMAGE_FORMAT,
            "minLength": 1,
            "maxLength": MAX_IMAGE_REF_LENGTH,
        }
        notes.append(_IMAGE_NOTE)
    else:
        schema = {"type": spec.type}
        for kw in _SCHEMA_KEYWORDS:
            value = getattr(spec, kw)
            if value is not None:
                schema[kw] = list(value) if isinstance(value, list) else value
    if spec.random_default:
        notes.append(_random_note(spec))
    elif spec.has_default:
        schema["default"] = copy.deepcopy(spec.default)
    if notes:
        schema["description"] = " ".join(notes)
    return schema


def params_schema(doc: TemplateDocument) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a template's params: an object schema with
    ``properties``, ``required`` and ``additionalProperties: false``."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "type": "object",
        "properties": {name: param_schema(spec) for name, spec in doc.params.items()},
        "required": [name for name, spec in doc.params.items() if spec.required],
        "additionalProperties": False,
    }


# ---- resolution --------------------------------------------------------------------------------


def value_problems(spec: ParamSpec, value: Any) -> list[str]:
    """Every reason ``value`` is not acceptable for ``spec`` (empty if it is)."""
    why = type_problem(spec.type, value)
    if why:
        return [why]
    return constraint_problems(
        spec.type,
        value,
        minimum=spec.minimum,
        maximum=spec.maximum,
        multiple_of=spec.multipleOf,
        enum=spec.enum,
        min_length=spec.minLength,
        max_length=spec.maxLength,
    )


def draw_random(spec: ParamSpec, rng: random.Random | None = None) -> int:
    """Draw a value for a param whose default is ``"random"``: an integer in [0, 2^53) that
    also satisfies the param's minimum, maximum and multipleOf."""
    bounds = spec.random_range()
    if bounds is None:  # pragma: no cover - refused by ParamSpec validation
        raise ValueError("no integer satisfies this param's bounds")
    lo, hi, step = bounds
    r = rng if rng is not None else _system_rng
    return lo + step * r.randint(0, (hi - lo) // step)


def resolve_params(
    doc: TemplateDocument, params: Mapping[str, Any] | None, *, rng: random.Random | None = None
) -> dict[str, Any]:
    """Validate a job's ``params`` against the template and return the resolved params.

    The result has, in the template's param order, every given param, and the default of every
    param not given (``"random"`` defaults are drawn with ``rng``, by default a system RNG). An
    optional param with no default that is not given is left out (the workflow's value stays).

    Raises :class:`ParamsInvalid` listing every problem at once: unknown params (each named),
    missing required params, and values of the wrong type or outside the constraints.
    ``params=None`` is the same as ``{}``.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ParamsInvalid([{"param": None, "message": "params must be a JSON object"}])

    errors: list[dict[str, Any]] = []
    known = list(doc.params)
    for name in params:
        if name not in doc.params:
            hint = (
                f"this template's params are: {', '.join(known)}"
                if known
                else "this template takes no params"
            )
            errors.append({"param": name, "message": f"unknown param {name!r}; {hint}"})

    resolved: dict[str, Any] = {}
    for name, spec in doc.params.items():
        if name in params:
            value = params[name]
            problems = value_problems(spec, value)
            if problems:
                errors.extend({"param": name, "message": p} for p in problems)
            else:
                resolved[name] = copy.deepcopy(value)
        elif spec.required:
            errors.append({"param": name, "message": "required param is missing"})
        elif spec.random_default:
            resolved[name] = draw_random(spec, rng)
        elif spec.has_default:
            resolved[name] = copy.deepcopy(spec.default)
    if errors:
        raise ParamsInvalid(errors)
    return resolved


# ---- rendering ---------------------------------------------------------------------------------


def render(doc: TemplateDocument, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the template's workflow with every bound input set to its param's value.

    Each value replaces the whole input value; nothing is spliced into strings. ``resolved``
    should come from :func:`resolve_params` (possibly with image references already replaced by
    the component that resolves them). A key that is not a param of the template is a
    programming error (ValueError). The template is not modified.
    """
    unknown = [k for k in resolved if k not in doc.params]
    if unknown:
        raise ValueError(f"not params of this template: {', '.join(map(repr, unknown))}")
    workflow = copy.deepcopy(doc.workflow)
    errors = []
    for name, value in resolved.items():
        spec = doc.params[name]
        for i, (node_id, input_name) in enumerate(spec.binds()):
            node = workflow.get(node_id)
            if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
                errors.append(
                    {
                        "field": f"params.{name}.bind[{i}]",
                        "message": f"node {node_id!r} is not in the workflow",
                    }
                )
                continue
            node["inputs"][input_name] = copy.deepcopy(value)
    if errors:
        raise TemplateInvalid(errors)
    return workflow


# ---- outputs -----------------------------------------------------------------------------------


def output_nodes(doc: TemplateDocument, object_info: Mapping[str, Any] | None = None) -> list[str]:
    """The ids of the nodes whose files a job of this template returns.

    ``doc.outputs`` when given. Otherwise every output node of the workflow, in workflow order: a
    node is an output node when its class has ``output_node: true`` in ``object_info``; for a class
    that ``object_info`` does not describe (or without ``object_info``), when its class is one of
    :data:`KNOWN_OUTPUT_CLASSES`.
    """
    if doc.outputs is not None:
        return list(doc.outputs)
    result = []
    for node_id, node in doc.workflow.items():
        if not isinstance(node, Mapping):
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str):
            continue
        info = object_info.get(class_type) if object_info is not None else None
        if isinstance(info, Mapping):
            if is_output_class(info):
                result.append(node_id)
        elif class_type in KNOWN_OUTPUT_CLASSES:
            result.append(node_id)
    return result
