"""Workflow templates: the document format, its checks, params resolution and rendering.

A pure library (pydantic and the standard library only); it imports nothing else from ``app``.
"""

from ._values import MAX_IMAGE_REF_LENGTH, PARAM_TYPES, RANDOM_SEED_LIMIT
from .checks import check_template, declared_inputs, is_link
from .document import (
    BIND_PATTERN,
    NAME_PATTERN,
    PARAM_KEYWORDS,
    RANDOM_DEFAULT,
    ParamSpec,
    TemplateDocument,
    parse_bind,
    parse_template,
    validate_name,
)
from .errors import ParamsInvalid, TemplateInvalid
from .loader import load_builtin, load_directory, parse_template_json
from .params import (
    IMAGE_FORMAT,
    KNOWN_OUTPUT_CLASSES,
    draw_random,
    output_nodes,
    params_schema,
    render,
    resolve_params,
)

__all__ = [
    "BIND_PATTERN",
    "IMAGE_FORMAT",
    "KNOWN_OUTPUT_CLASSES",
    "MAX_IMAGE_REF_LENGTH",
    "NAME_PATTERN",
    "PARAM_KEYWORDS",
    "PARAM_TYPES",
    "RANDOM_DEFAULT",
    "RANDOM_SEED_LIMIT",
    "ParamSpec",
    "ParamsInvalid",
    "TemplateDocument",
    "TemplateInvalid",
    "check_template",
    "declared_inputs",
    "draw_random",
    "is_link",
    "load_builtin",
    "load_directory",
    "output_nodes",
    "params_schema",
    "parse_bind",
    "parse_template",
    "parse_template_json",
    "render",
    "resolve_params",
    "validate_name",
]
