"""`POST /prompt` validation: a port of ComfyUI's validate_prompt / validate_inputs.

The error bodies are ComfyUI's, down to its quirks (see errors_prompt_400.json): only the output
node's own errors make it into `error.details`; an upstream failure marks every failed node
validated so far with the output in `dependent_outputs`; a link to a missing node is not a
validation error but an exception (`exception_during_validation`, with a traceback); values are
converted in place (`"64"` becomes `64` in the queued prompt). Tracebacks use fake ComfyUI
paths, like the recordings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from .catalog import InputSpec, NodeCatalog
from .files import Folders

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

_TB_VALIDATE_PROMPT = (
    '  File "<COMFYUI_ROOT>/execution.py", line 1010, in validate_prompt\n'
    "    m = await validate_inputs(prompt_id, prompt, o, validated)\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
)
_TB_INNER_VALIDATE = (
    '  File "<COMFYUI_ROOT>/execution.py", line 834, in validate_inputs\n'
    "    r = await validate_inputs(prompt_id, prompt, o_id, validated)\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
)
_TB_LINK_LOOKUP = (
    '  File "<COMFYUI_ROOT>/execution.py", line 788, in validate_inputs\n'
    "    o_class_type = prompt[o_id]['class_type']\n"
    "                   ~~~~~~^^^^^^\n"
)
_TB_RETURN_TYPE = (
    '  File "<COMFYUI_ROOT>/execution.py", line 790, in validate_inputs\n'
    "    received_type = r[val[1]]\n"
    "                    ~^^^^^^^^\n"
)
_TB_GENERIC = "  File \"<COMFYUI_ROOT>/execution.py\", line 760, in validate_inputs\n    inputs = prompt[unique_id]['inputs']\n"


class _Crash(Exception):
    """An exception inside validate_inputs, with the (fake) traceback lines of where it arose."""

    def __init__(self, exc: BaseException, tb: list[str]) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.tb = tb


def full_type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def validate_node_input(received_type: Any, input_type: Any) -> bool:
    """ComfyUI's type compatibility of a link: equal, or overlapping comma lists, or `*`."""
    if not received_type != input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    if "*" in received or "*" in wanted:
        return True
    return len(received & wanted) > 0


#: ComfyUI nodes with a VALIDATE_INPUTS: class -> (the inputs it takes, the check). An input it
#: takes skips the range / COMBO checks, which is why LoadImage accepts any existing file
#: (e.g. `sub/x.png`) and reports a missing one as `custom_validation_failed`.
def _image_exists(folders: Folders, values: dict[str, Any]) -> bool | str:
    image = values.get("image")
    if not folders.input_image_exists(image):
        return f"Invalid image file: {image}"
    return True


CUSTOM_VALIDATORS: dict[str, tuple[tuple[str, ...], Callable[[Folders, dict[str, Any]], bool | str]]] = {
    "LoadImage": (("image",), _image_exists),
    "LoadImageMask": (("image",), _image_exists),
}


class Validator:
    def __init__(self, catalog: NodeCatalog, folders: Folders) -> None:
        self.catalog = catalog
        self.folders = folders

    def validate_prompt(
        self, prompt: dict[str, Any], partial_execution_list: Iterable[str] | None = None
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        """`(valid, error, good_outputs, node_errors)`, as ComfyUI's validate_prompt."""
        if not isinstance(prompt, dict):
            raise TypeError("prompt must be an object")  # ComfyUI fails the same way: a 500
        partial = None if partial_execution_list is None else set(partial_execution_list)
        outputs: list[str] = []
        for x, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return (
                    False,
                    _error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{x}'",
                    ),
                    [],
                    {},
                )
            class_type = node["class_type"]
            if class_type not in self.catalog:
                return (
                    False,
                    _error(
                        "invalid_prompt",
                        f"Cannot execute because node {class_type} does not exist.",
                        f"Node ID '#{x}'",
                    ),
                    [],
                    {},
                )
            if self.catalog.spec(class_type).output_node and (partial is None or x in partial):
                outputs.append(x)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

        good_outputs: list[str] = []
        errors: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        validated: dict[str, tuple[bool, list[dict[str, Any]], str]] = {}
        for o in outputs:
            try:
                valid, reasons, _ = self._validate_inputs(prompt, o, validated, set())
            except _Crash as crash:
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(crash.exc),
                        "extra_info": {
                            "exception_type": full_type_name(crash.exc),
                            "traceback": [_TB_VALIDATE_PROMPT, *crash.tb],
                        },
                    }
                ]
                validated[o] = (False, reasons, o)
            if valid is True:
                good_outputs.append(o)
                continue
            errors.append((o, reasons))
            for node_id, result in validated.items():
                if result[0] is not True and len(result[1]) > 0:
                    if node_id not in node_errors:
                        node_errors[node_id] = {
                            "errors": result[1],
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        }
                    node_errors[node_id]["dependent_outputs"].append(o)

        if not good_outputs:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in errors for e in reasons)
            return (
                False,
                _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
                [],
                node_errors,
            )
        return True, None, good_outputs, node_errors

    def _validate_inputs(
        self, prompt: dict[str, Any], unique_id: str, validated: dict[str, Any], visiting: set[str]
    ) -> tuple[bool, list[dict[str, Any]], str]:
        if unique_id in validated:
            return validated[unique_id]
        if unique_id in visiting:
            raise _Crash(
                RecursionError("maximum recursion depth exceeded (dependency cycle)"), [_TB_INNER_VALIDATE]
            )
        visiting.add(unique_id)
        try:
            inputs = prompt[unique_id]["inputs"]
            class_type = prompt[unique_id]["class_type"]
            spec = self.catalog.spec(class_type)
            custom = CUSTOM_VALIDATORS.get(class_type)
            custom_inputs = custom[0] if custom else ()
        except Exception as ex:
            raise _Crash(ex, [_TB_GENERIC]) from ex

        errors: list[dict[str, Any]] = []
        valid = True
        for x, ispec in spec.inputs.items():
            if x not in inputs:
                if ispec.category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue
            val = inputs[x]
            if isinstance(val, list):
                result = self._check_link(prompt, x, ispec, val, validated, visiting)
                if result is False:
                    valid = False
                elif result is not None:
                    errors.append(result)
                continue
            error = self._check_value(inputs, x, ispec, val, x in custom_inputs)
            if error is not None:
                errors.append(error)

        if custom is not None:
            values = {k: inputs[k] for k in custom_inputs if k in inputs and not isinstance(inputs[k], list)}
            if values:
                r = custom[1](self.folders, values)
                if r is not True:
                    for x in values:
                        details = x if r is False else f"{x} - {r}"
                        errors.append(
                            {
                                "type": "custom_validation_failed",
                                "message": "Custom validation failed for node",
                                "details": details,
                                "extra_info": {"input_name": x},
                            }
                        )

        ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        validated[unique_id] = ret
        visiting.discard(unique_id)
        return ret

    def _check_link(
        self,
        prompt: dict[str, Any],
        x: str,
        ispec: InputSpec,
        val: list[Any],
        validated: dict[str, Any],
        visiting: set[str],
    ) -> dict[str, Any] | bool | None:
        """An error for a bad link; False when the linked node failed; None when fine."""
        if len(val) != 2:
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": f"{x}",
                "extra_info": {"input_name": x, "input_config": ispec.config, "received_value": val},
            }
        o_id = val[0]
        try:
            o_class_type = prompt[o_id]["class_type"]
        except Exception as ex:
            raise _Crash(ex, [_TB_LINK_LOOKUP]) from ex
        try:
            received_type = self.catalog.spec(o_class_type).outputs[val[1]]
        except Exception as ex:
            raise _Crash(ex, [_TB_RETURN_TYPE]) from ex
        if not validate_node_input(received_type, ispec.type):
            return {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": f"{x}, received_type({received_type}) mismatch input_type({ispec.type})",
                "extra_info": {
                    "input_name": x,
                    "input_config": ispec.config,
                    "received_type": received_type,
                    "linked_node": val,
                },
            }
        try:
            r = self._validate_inputs(prompt, o_id, validated, visiting)
        except _Crash as crash:
            reasons = [
                {
                    "type": "exception_during_inner_validation",
                    "message": "Exception when validating inner node",
                    "details": str(crash.exc),
                    "extra_info": {
                        "input_name": x,
                        "input_config": ispec.config,
                        "exception_message": str(crash.exc),
                        "exception_type": full_type_name(crash.exc),
                        "traceback": [_TB_INNER_VALIDATE, *crash.tb],
                        "linked_node": val,
                    },
                }
            ]
            validated[o_id] = (False, reasons, o_id)
            return False
        return False if r[0] is False else None

    @staticmethod
    def _check_value(
        inputs: dict[str, Any], x: str, ispec: InputSpec, val: Any, custom: bool
    ) -> dict[str, Any] | None:
        input_type, extra = ispec.type, ispec.extra
        try:
            if isinstance(val, dict) and "__value__" in val:
                val = val["__value__"]
                inputs[x] = val
            if input_type == "INT":
                val = int(val)
                inputs[x] = val
            elif input_type == "FLOAT":
                val = float(val)
                inputs[x] = val
            elif input_type == "STRING":
                val = str(val)
                inputs[x] = val
            elif input_type == "BOOLEAN":
                val = bool(val)
                inputs[x] = val
        except Exception as ex:  # noqa: BLE001  a bad input value is a validation error, as in ComfyUI
            return {
                "type": "invalid_input_type",
                "message": f"Failed to convert an input value to a {input_type} value",
                "details": f"{x}, {val}, {ex}",
                "extra_info": {
                    "input_name": x,
                    "input_config": ispec.config,
                    "received_value": val,
                    "exception_message": str(ex),
                },
            }
        if custom:
            return None
        if "min" in extra and _lt(val, extra["min"]):
            return {
                "type": "value_smaller_than_min",
                "message": "Value {} smaller than min of {}".format(val, extra["min"]),
                "details": f"{x}",
                "extra_info": {"input_name": x, "input_config": ispec.config, "received_value": val},
            }
        if "max" in extra and _lt(extra["max"], val):
            return {
                "type": "value_bigger_than_max",
                "message": "Value {} bigger than max of {}".format(val, extra["max"]),
                "details": f"{x}",
                "extra_info": {"input_name": x, "input_config": ispec.config, "received_value": val},
            }
        if isinstance(input_type, list) or input_type == "COMBO":
            options = input_type if isinstance(input_type, list) else extra.get("options", [])
            if val not in options:
                input_config: Any = ispec.config
                if len(options) > 20:
                    list_info = f"(list of length {len(options)})"
                    input_config = None
                else:
                    list_info = str(options)
                return {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{x}: '{val}' not in {list_info}",
                    "extra_info": {"input_name": x, "input_config": input_config, "received_value": val},
                }
        return None


def _lt(a: Any, b: Any) -> bool:
    try:
        return bool(a < b) and not (isinstance(a, float) and math.isnan(a))
    except TypeError:
        return False


def _error(type_: str, message: str, details: str) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": {}}
