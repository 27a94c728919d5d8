"""Property tests of the request models and of template params: whatever JSON a client sends, the
only failure is a validation error (a 422, never a 500), and whatever is accepted can be stored and
sent on as strict JSON (no NaN, valid UTF-8, within the depth the edge allows)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.api import schemas
from app.api.input_checks import JsonObject
from app.api.problems import _field_errors
from app.domain import json_values
from app.domain.json_values import sanitized
from app.templates import ParamsInvalid, TemplateInvalid, load_builtin, parse_template, render, resolve_params

FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, lone surrogates and NUL included (hypothesis leaves surrogates out by default).
ANY_CHAR = st.characters(exclude_categories=())
TEXT = st.text(ANY_CHAR, max_size=12) | st.sampled_from(
    ["", "\ud800", "a\x00b", "txt2img", "http://127.0.0.1:1/x", "\udfffz"]
)
NUMBERS = (
    st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1])
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT


def _nest(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if depth % 2 else [leaf]
    return leaf


JSON = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4), max_leaves=20
) | st.builds(_nest, st.integers(min_value=25, max_value=300), SCALARS)


DICTS = st.dictionaries(TEXT, JSON, max_size=4)
# Plausible values per field name, so that samples get past the type checks to the edge checks.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "template": TEXT,
    "workflow": DICTS,
    "params": DICTS,
    "metadata": DICTS,
    "priority": st.integers(min_value=-(10**6), max_value=10**6),
    "timeout_seconds": NUMBERS,
    "webhook": st.fixed_dictionaries({"url": TEXT}),
    "url": TEXT,
    "events": st.lists(
        st.sampled_from(["job.running", "job.succeeded", "job.failed", "job.canceled"]), min_size=1
    ),
    "name": TEXT,
    "is_admin": st.booleans(),
    "disabled": st.booleans(),
    "limits": st.dictionaries(
        st.sampled_from(["max_queued", "weight", "allow_raw_workflows"]), SCALARS, max_size=2
    ),
    "description": TEXT,
    "outputs": st.lists(TEXT, max_size=2),
    "keep_temp": st.booleans(),
}


def _object_of(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of the model's own fields (each maybe absent), with plausible or arbitrary values,
    sometimes an unknown member."""
    optional = {f: FIELD_VALUES.get(f, JSON) | JSON if f in FIELD_VALUES else JSON for f in fields}
    plausible = {f: FIELD_VALUES.get(f, JSON) for f in fields}
    return (
        st.fixed_dictionaries({}, optional=plausible)
        | st.fixed_dictionaries({}, optional=optional)
        | st.dictionaries(TEXT, JSON, max_size=2)
    )


def _assert_strict_json(value: Any) -> None:
    # ensure_ascii=False: a lone surrogate must fail to encode here, as it does on the way out.
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def _assert_renders_as_problem(exc: ValidationError) -> None:
    """The 422 the API answers for it can be encoded (app/api/problems.py)."""
    errors = _field_errors(RequestValidationError(exc.errors()))
    assert errors and all(e["field"] for e in errors)
    _assert_strict_json(sanitized({"errors": errors}))


REQUEST_MODELS: list[type[BaseModel]] = [
    schemas.GenerateRequest,
    schemas.WebhookIn,
    schemas.UserCreate,
    schemas.UserPatch,
    schemas.KeyCreate,
    schemas.BackendCreate,
]


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.__name__)
def test_request_models_accept_only_what_strict_json_can_carry(model: type[BaseModel]) -> None:
    @FUZZ
    @given(body=_object_of(list(model.model_fields)) | JSON)
    def check(body: Any) -> None:
        try:
            accepted = model.model_validate(body)
        except ValidationError as exc:
            _assert_renders_as_problem(exc)
            return
        _assert_strict_json(accepted.model_dump(mode="python"))
        _assert_strict_json(accepted.model_dump(mode="json"))
        dumped = accepted.model_dump(mode="python")
        # NUL is refused everywhere but in metadata, which is only echoed back.
        metadata = dumped.pop("metadata", None)
        assert json_values.problem(dumped, max_depth=json_values.MAX_DEPTH + 1) is None
        assert json_values.problem(metadata, allow_nul=True) is None

    check()


def test_a_template_document_body_is_refused_or_parsed_never_crashes() -> None:
    adapter = TypeAdapter(JsonObject)
    builtin = {name: doc.to_dict() for name, doc in load_builtin().items()}

    @FUZZ
    @given(
        body=_object_of(["description", "workflow", "params", "outputs", "keep_temp"]) | JSON,
        base=st.sampled_from(sorted(builtin)),
        patch=st.dictionaries(
            st.sampled_from(["description", "workflow", "params", "outputs"]), JSON, max_size=2
        ),
    )
    def check(body: Any, base: str, patch: dict[str, Any]) -> None:
        for candidate in (body, {**builtin[base], **patch}):
            try:
                document = adapter.validate_python(candidate)
            except ValidationError as exc:
                _assert_renders_as_problem(exc)
                continue
            try:
                parsed = parse_template(document)
            except TemplateInvalid as exc:
                _assert_strict_json(sanitized(exc.errors))
                continue
            _assert_strict_json(parsed.to_dict())

    check()


@st.composite
def _params_for(draw: st.DrawFn, name: str) -> dict[str, Any]:
    doc = load_builtin()[name]
    params: dict[str, Any] = {}
    for param, spec in doc.params.items():
        if draw(st.booleans()):
            continue
        if spec.type == "integer":
            params[param] = draw(st.integers(min_value=-(2**65), max_value=2**65) | JSON)
        elif spec.type == "number":
            params[param] = draw(NUMBERS | JSON)
        else:
            params[param] = draw(TEXT | JSON)
    return draw(
        st.dictionaries(TEXT, JSON, max_size=1).map(lambda extra: {**params, **extra}) | st.just(params)
    )


@pytest.mark.parametrize("name", sorted(load_builtin()))
def test_template_params_are_refused_or_render_to_strict_json(name: str) -> None:
    doc = load_builtin()[name]

    @FUZZ
    @given(params=_params_for(name))
    def check(params: dict[str, Any]) -> None:
        # The path a request takes: the request model at the edge, then the template's own checks.
        try:
            request = schemas.GenerateRequest.model_validate({"template": name, "params": params})
        except ValidationError as exc:
            _assert_renders_as_problem(exc)
            return
        try:
            resolved = resolve_params(doc, request.params)
        except ParamsInvalid as exc:
            _assert_strict_json(sanitized(exc.errors))
            return
        _assert_strict_json(resolved)
        _assert_strict_json(render(doc, resolved))

    check()


@FUZZ
@given(value=JSON)
def test_a_stored_value_always_sanitizes_to_strict_json(value: Any) -> None:
    _assert_strict_json(sanitized({"metadata": value}))


def test_every_json_body_goes_through_the_edge_checks(tmp_path) -> None:  # noqa: ANN001
    """A route added later with a plain BaseModel or dict body would skip them: caught here, over
    every route the app serves (/v1, /api/v2, the images API)."""
    import typing

    from fastapi.routing import APIRoute
    from pydantic import BeforeValidator

    from app.api.input_checks import RequestModel, check
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", _env_file=None))

    def walk(routes: list) -> list:
        # Included routers (and routers including others, as /api/v2 does) hold their routes.
        found = []
        for route in routes:
            inner = getattr(route, "original_router", None)
            found += walk(inner.routes) if inner is not None else [route]
        return found

    bodies = []
    for route in walk(app.routes):
        if isinstance(route, APIRoute) and route.body_field is not None:
            field = route.body_field.field_info
            models = [
                t for t in (typing.get_args(field.annotation) or (field.annotation,)) if t is not type(None)
            ]
            checked = all(isinstance(t, type) and issubclass(t, RequestModel) for t in models) or any(
                isinstance(m, BeforeValidator) and m.func is check for m in field.metadata
            )
            bodies.append((route.path, checked))
    assert len(bodies) >= 6
    assert [path for path, checked in bodies if not checked] == []
