"""The template document, the format an operator writes, as pydantic models.

A document looks like::

    {
      "description": "Text to image, SD 1.5 class checkpoints",
      "workflow": {"3": {"class_type": "KSampler", "inputs": {"seed": 0, ...}}, ...},
      "params": {
        "prompt": {"type": "string", "required": true, "maxLength": 2000, "bind": ["6.inputs.text"]},
        "seed":   {"type": "integer", "default": "random", "bind": ["3.inputs.seed"]}
      },
      "outputs": ["9"],
      "timeout_seconds": 300
    }

These models check everything that can be checked from the document alone (param keywords and
their consistency, bind syntax, names). Checks against the workflow graph and against a server's
``/object_info`` are in :mod:`app.templates.checks`.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ._values import (
    PARAM_TYPES,
    RANDOM_SEED_LIMIT,
    constraint_problems,
    is_number,
    json_type_name,
    type_problem,
)
from .errors import TemplateInvalid

ParamType = Literal["string", "integer", "number", "boolean", "image"]

#: The keys a param may have.
PARAM_KEYWORDS: tuple[str, ...] = (
    "type",
    "required",
    "bind",
    "default",
    "minimum",
    "maximum",
    "multipleOf",
    "enum",
    "minLength",
    "maxLength",
    "description",
    "mask_of",
)

#: The keys a template document may have.
DOCUMENT_KEYS: tuple[str, ...] = (
    "description",
    "workflow",
    "params",
    "outputs",
    "timeout_seconds",
    "keep_temp",
    "openai",
)

#: The special default of an integer param that draws a fresh value in [0, 2^53) for each job.
RANDOM_DEFAULT = "random"

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)

PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_PARAM_NAME_RE = re.compile(PARAM_NAME_PATTERN)

#: "<node id>.inputs.<input name>": the node id has no dot and no white space, the input name
#: neither starts nor ends with white space.
BIND_PATTERN = r"^(?P<node>[^.\s]+)\.inputs\.(?P<input>\S(?:.*\S)?)$"
_BIND_RE = re.compile(BIND_PATTERN, re.DOTALL)

_NUMERIC_KEYWORDS = ("minimum", "maximum", "multipleOf")
_LENGTH_KEYWORDS = ("minLength", "maxLength")


def validate_name(name: Any) -> str:
    """Return ``name`` if it is a valid template name, else raise :class:`TemplateInvalid`.

    A name is 1 to 64 characters of ``a-z 0-9 _ . -`` starting with a letter or digit.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TemplateInvalid(
            [
                {
                    "field": "name",
                    "message": (
                        f"invalid template name {name!r}: use 1 to 64 characters among lowercase "
                        "letters, digits, '_', '.' and '-', starting with a letter or a digit"
                    ),
                }
            ]
        )
    return name


def parse_bind(bind: str) -> tuple[str, str]:
    """Split ``"<node id>.inputs.<input name>"`` into ``(node_id, input_name)``.

    Raises ValueError when ``bind`` is not of that form.
    """
    m = _BIND_RE.fullmatch(bind) if isinstance(bind, str) else None
    if m is None:
        raise ValueError(f"{bind!r} is not of the form '<node id>.inputs.<input name>'")
    return m.group("node"), m.group("input")


def _check_bind(item: str) -> str:
    parse_bind(item)
    return item


BindStr = Annotated[str, AfterValidator(_check_bind)]


def _strict_number(value: Any, keyword: str) -> Any:
    if value is None:
        return None
    if not is_number(value):
        got = repr(value) if isinstance(value, float) else json_type_name(value)
        raise ValueError(f"'{keyword}' must be a finite number, got {got}")
    return value


class ParamSpec(BaseModel):
    """One param of a template: its type, JSON Schema keywords, and the node inputs it sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType
    bind: list[BindStr] = Field(min_length=1)
    required: bool = False
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    multipleOf: int | float | None = None
    enum: list[Any] | None = None
    minLength: int | None = None
    maxLength: int | None = None
    description: str | None = None
    # An image param that is a mask for another image param (named here): staged with ComfyUI's
    # /upload/mask, which puts this image's alpha channel onto that image (inpainting).
    mask_of: str | None = None

    @field_validator("default", mode="before")
    @classmethod
    def _default_not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("'default' must not be null; leave it out for no default")
        return v

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        if v not in PARAM_TYPES:
            raise ValueError(f"'type' must be one of {', '.join(PARAM_TYPES)}; got {v!r}")
        return v

    @field_validator("required", mode="before")
    @classmethod
    def _required(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError(f"'required' must be true or false, got {json_type_name(v)}")
        return v

    @field_validator("bind", mode="before")
    @classmethod
    def _bind_list(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError(
                "'bind' must be a non-empty list of '<node id>.inputs.<input name>' strings, "
                f"got {json_type_name(v)}"
            )
        if not v:
            raise ValueError("'bind' must name at least one node input")
        return v

    @field_validator("bind", mode="after")
    @classmethod
    def _bind_unique(cls, v: list[str]) -> list[str]:
        dups = [f"bind[{i}] ({b!r})" for i, b in enumerate(v) if b in v[:i]]
        if dups:
            raise ValueError(f"{', '.join(dups)} listed twice")
        return v

    @field_validator("minimum", "maximum", "multipleOf", mode="before")
    @classmethod
    def _numbers(cls, v: Any, info: Any) -> Any:
        return _strict_number(v, info.field_name)

    @field_validator("minLength", "maxLength", mode="before")
    @classmethod
    def _lengths(cls, v: Any, info: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"'{info.field_name}' must be a non-negative integer, got {v!r}")
        return v

    @field_validator("enum", mode="before")
    @classmethod
    def _enum(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, list) or not v:
            raise ValueError("'enum' must be a non-empty list")
        return v

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"'description' must be a string, got {json_type_name(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        t = self.type
        problems: list[str] = []
        for kw in _NUMERIC_KEYWORDS:
            if getattr(self, kw) is not None and t not in ("integer", "number"):
                problems.append(f"'{kw}' applies only to integer and number params, not {t}")
        for kw in _LENGTH_KEYWORDS:
            if getattr(self, kw) is not None and t != "string":
                problems.append(f"'{kw}' applies only to string params, not {t}")
        if self.enum is not None and t == "image":
            problems.append("'enum' does not apply to image params")
        if self.mask_of is not None and t != "image":
            problems.append("'mask_of' applies only to image params")
        if self.multipleOf is not None and self.multipleOf <= 0:
            problems.append(f"'multipleOf' must be greater than 0, got {self.multipleOf!r}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            problems.append(f"'minimum' ({self.minimum!r}) is greater than 'maximum' ({self.maximum!r})")
        if self.minLength is not None and self.maxLength is not None and self.minLength > self.maxLength:
            problems.append(f"'minLength' ({self.minLength}) is greater than 'maxLength' ({self.maxLength})")
        if self.enum is not None and t != "image":
            enum_types_ok = True
            for i, e in enumerate(self.enum):
                why = type_problem(t, e)
                if why:
                    enum_types_ok = False
                    problems.append(f"enum[{i}] {why}")
            if enum_types_ok:
                for i, e in enumerate(self.enum):
                    if any(e == prev for prev in self.enum[:i]):
                        problems.append(f"enum[{i}] ({e!r}) is listed twice")
        if problems:
            raise ValueError("; ".join(problems))

        if self.has_default:
            if self.required:
                problems.append(
                    "a param cannot be both required and have a default; drop 'required' or drop 'default'"
                )
            problems.extend(self._default_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _default_problems(self) -> list[str]:
        t = self.type
        d = self.default
        if isinstance(d, str) and d == RANDOM_DEFAULT and t in ("integer", "number", "boolean"):
            if t != "integer":
                return [f"the 'random' default is only allowed for integer params, not {t}"]
            problems = []
            if self.enum is not None:
                problems.append("the 'random' default cannot be combined with 'enum'")
            if self.multipleOf is not None and not (
                isinstance(self.multipleOf, int)
                or (isinstance(self.multipleOf, float) and self.multipleOf.is_integer())
            ):
                problems.append("the 'random' default needs an integral 'multipleOf'")
            if not problems and self.random_range() is None:
                problems.append(
                    "the 'random' default needs an integer in [0, 2^53) that satisfies "
                    "'minimum', 'maximum' and 'multipleOf', and there is none"
                )
            return problems
        why = type_problem(t, d)
        if why:
            return [f"'default' {why}"]
        return [
            f"'default' {p}"
            for p in constraint_problems(
                t,
                d,
                minimum=self.minimum,
                maximum=self.maximum,
                multiple_of=self.multipleOf,
                enum=self.enum,
                min_length=self.minLength,
                max_length=self.maxLength,
            )
        ]

    # ---- helpers -------------------------------------------------------------------------------

    @property
    def has_default(self) -> bool:
        """Whether the param declares a default (null defaults are refused, so None means none)."""
        return self.default is not None

    @property
    def random_default(self) -> bool:
        """Whether the default is ``"random"``: a fresh integer is drawn for each job."""
        return self.type == "integer" and self.default == RANDOM_DEFAULT

    def random_range(self) -> tuple[int, int, int] | None:
        """For a ``"random"`` default: ``(low, high, step)``, the draw is ``low + k*step <= high``.

        ``low`` and ``high`` are inclusive and lie in [0, 2^53); ``low`` is a multiple of ``step``.
        None if no integer satisfies the param's bounds.
        """
        lo = 0
        hi = RANDOM_SEED_LIMIT - 1
        if self.minimum is not None:
            lo = max(lo, math.ceil(self.minimum))
        if self.maximum is not None:
            hi = min(hi, math.floor(self.maximum))
        step = int(self.multipleOf) if self.multipleOf is not None else 1
        lo = -(-lo // step) * step
        hi = (hi // step) * step
        if lo > hi:
            return None
        return lo, hi, step

    def binds(self) -> list[tuple[str, str]]:
        """The ``(node_id, input_name)`` pairs this param sets."""
        return [parse_bind(b) for b in self.bind]

    def to_dict(self) -> dict[str, Any]:
        """The param in document form (keys that were not given are left out)."""
        out: dict[str, Any] = {"type": self.type}
        if self.required:
            out["required"] = True
        for key in PARAM_KEYWORDS:
            if key in ("type", "required"):
                continue
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, list) else value
        return out


#: What each member of an `openai` mapping names: the type of param it must be.
OPENAI_PARAM_TYPES: dict[str, str] = {
    "prompt": "string",
    "n": "integer",
    "image": "image",
    "mask": "image",
    "quality": "string",
    "style": "string",
}


class OpenAIMapping(BaseModel):
    """How the OpenAI images API (app/api/openai_images.py) fills a template's params: each member
    names the param that takes that request field. A template with this mapping is listed as a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    # [width param, height param]: `size` "WxH" is split onto them.
    size: tuple[str, str] | None = None
    # Takes `n` as a batch size: one job makes n images. Without it, `n` makes n jobs.
    n: str | None = None
    # The image to edit (POST /v1/images/edits) and its mask.
    image: str | None = None
    mask: str | None = None
    quality: str | None = None
    style: str | None = None

    def problems(self, params: dict[str, ParamSpec]) -> list[str]:
        out = []
        named: list[tuple[str, str, str]] = [
            (field, name, OPENAI_PARAM_TYPES[field])
            for field in OPENAI_PARAM_TYPES
            if (name := getattr(self, field)) is not None
        ]
        if self.size is not None:
            named += [("size[0]", self.size[0], "integer"), ("size[1]", self.size[1], "integer")]
        for field, name, wanted in named:
            spec = params.get(name)
            if spec is None:
                out.append(f"openai.{field} names no param ({name!r})")
            elif spec.type != wanted:
                article = "an" if wanted in ("integer", "image") else "a"
                out.append(f"openai.{field} must name {article} {wanted} param; {name!r} is {spec.type}")
        if self.mask is not None and self.image is None:
            out.append("openai.mask needs openai.image (the image the mask applies to)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump().items() if v is not None
        }


class TemplateDocument(BaseModel):
    """A whole template document. The template's name is not part of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    workflow: dict[str, Any] = Field(min_length=1)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    outputs: list[str] | None = None
    timeout_seconds: int | float | None = None
    # Keep `temp` files (previews: PreviewImage, PreviewAudio...) as outputs too; by default only
    # saved files are.
    keep_temp: bool = False
    # Opt-in to the OpenAI-compatible images API (see OpenAIMapping).
    openai: OpenAIMapping | None = None

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, v: Any) -> Any:
        if not isinstance(v, str):
            raise ValueError(f"'description' must be a string, got {json_type_name(v)}")
        return v

    @field_validator("workflow", mode="before")
    @classmethod
    def _workflow(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError(
                "'workflow' must be a ComfyUI API-format graph (an object of node id -> node), "
                f"got {json_type_name(v)}"
            )
        if not v:
            raise ValueError("'workflow' has no nodes")
        return v

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError(f"'params' must be an object of name -> param, got {json_type_name(v)}")
        bad = [k for k in v if not isinstance(k, str) or not _PARAM_NAME_RE.fullmatch(k)]
        if bad:
            raise ValueError(
                f"invalid param name(s) {', '.join(repr(k) for k in bad)}: use 1 to 64 characters "
                "among letters, digits and '_', not starting with a digit"
            )
        return v

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, list) or not v:
            raise ValueError(
                "'outputs' must be a non-empty list of node ids (leave it out to return the files "
                "of every output node)"
            )
        problems = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                problems.append(f"outputs[{i}] must be a node id string, got {json_type_name(item)}")
            elif item in v[:i]:
                problems.append(f"outputs[{i}] ({item!r}) is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("timeout_seconds", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        if v is None:
            return None
        if not is_number(v) or v <= 0:
            raise ValueError(f"'timeout_seconds' must be a positive number, got {v!r}")
        return v

    @model_validator(mode="after")
    def _masks_name_images(self) -> TemplateDocument:
        problems = [
            f"param {name!r}: 'mask_of' must name another image param, not {spec.mask_of!r}"
            for name, spec in self.params.items()
            if spec.mask_of is not None
            and (
                spec.mask_of == name
                or spec.mask_of not in self.params
                or self.params[spec.mask_of].type != "image"
            )
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("openai", mode="after")
    @classmethod
    def _openai_names_params(cls, v: OpenAIMapping | None, info: Any) -> OpenAIMapping | None:
        # A field validator (not a model one), so that the problem is reported under `openai`;
        # `params` is declared first, so it is there when valid.
        params = info.data.get("params")
        problems = v.problems(params) if v is not None and params is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _no_input_bound_twice(self) -> TemplateDocument:
        owner: dict[str, str] = {}
        problems = []
        for name, spec in self.params.items():
            for b in spec.bind:
                if b in owner and owner[b] != name:
                    problems.append(f"{b!r} is bound by both params {owner[b]!r} and {name!r}")
                owner.setdefault(b, name)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The document in the operator's format (JSON-ready; keys not given are left out)."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        out["workflow"] = copy.deepcopy(self.workflow)
        out["params"] = {name: spec.to_dict() for name, spec in self.params.items()}
        if self.outputs is not None:
            out["outputs"] = list(self.outputs)
        if self.timeout_seconds is not None:
            out["timeout_seconds"] = self.timeout_seconds
        if self.keep_temp:
            out["keep_temp"] = True
        if self.openai is not None:
            out["openai"] = self.openai.to_dict()
        return out


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_template(data: Any) -> TemplateDocument:
    """Validate a document (parsed JSON) into a :class:`TemplateDocument`.

    Like ``TemplateDocument.model_validate`` but raises :class:`TemplateInvalid` with one
    ``{"field", "message"}`` per problem instead of pydantic's ValidationError. Problems with the
    document as a whole have the field ``""``.
    """
    if isinstance(data, TemplateDocument):
        return data
    if not isinstance(data, dict):
        raise TemplateInvalid(
            [{"field": "", "message": f"a template must be a JSON object, got {json_type_name(data)}"}]
        )
    try:
        return TemplateDocument.model_validate(data)
    except ValidationError as exc:
        raise TemplateInvalid(validation_errors(exc)) from None


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as ``{"field", "message"}`` dicts (without echoing the input), with
    clearer messages for unknown and missing keys."""
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err.get("loc", ()))
        etype = err.get("type")
        msg = str(err.get("msg", ""))
        if etype == "value_error" and msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif etype == "string_type" and len(loc) >= 1 and isinstance(loc[-1], int):
            msg = "must be a string"
        elif etype == "extra_forbidden" and loc:
            msg = _unknown_key_message(loc)
        elif etype == "missing" and loc:
            msg = f"'{loc[-1]}' is required"
            if len(loc) == 3 and loc[0] == "params" and loc[-1] == "type":
                msg += f": every param must be typed, one of {', '.join(PARAM_TYPES)}"
        errors.append({"field": _loc_to_field(loc), "message": msg})
    return errors


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    key = loc[-1]
    if len(loc) == 3 and loc[0] == "params":
        return f"unknown keyword {key!r}; a param may have only: {', '.join(PARAM_KEYWORDS)}"
    if len(loc) == 1:
        return f"unknown key {key!r}; a template may have only: {', '.join(DOCUMENT_KEYS)}"
    return f"unknown key {key!r}"
