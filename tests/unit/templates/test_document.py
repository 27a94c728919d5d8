"""The document models: keywords, types, consistency, binds, names, parse_template's errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.templates import (
    ParamSpec,
    TemplateDocument,
    TemplateInvalid,
    parse_bind,
    parse_template,
    validate_name,
)

from .helpers import doc_dict, param


def errors_of(raw: dict) -> list[dict]:
    with pytest.raises(TemplateInvalid) as ei:
        parse_template(raw)
    return ei.value.errors


def one_param_errors(p: dict, name: str = "p") -> list[dict]:
    return errors_of(doc_dict({name: p}))


def assert_error(errors: list[dict], field: str, *fragments: str) -> None:
    matching = [e for e in errors if e["field"] == field]
    assert matching, f"no error for field {field!r}: {errors}"
    text = " ".join(e["message"] for e in matching)
    for frag in fragments:
        assert frag in text, f"{frag!r} not in {text!r}"


# ---- a good document ---------------------------------------------------------------------------


def test_doc_example_from_api_doc_parses():
    raw = {
        "description": "Text to image, SD 1.5 class checkpoints",
        "workflow": {
            "3": {"class_type": "KSampler", "inputs": {"seed": 0, "steps": 20, "sampler_name": "euler"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ""}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},
            "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        },
        "params": {
            "prompt": {"type": "string", "required": True, "maxLength": 2000, "bind": ["6.inputs.text"]},
            "width": {
                "type": "integer",
                "default": 512,
                "minimum": 64,
                "maximum": 2048,
                "multipleOf": 8,
                "bind": ["5.inputs.width"],
            },
            "seed": {"type": "integer", "default": "random", "bind": ["3.inputs.seed"]},
            "sampler": {
                "type": "string",
                "enum": ["euler", "dpmpp_2m"],
                "default": "euler",
                "bind": ["3.inputs.sampler_name"],
            },
            "image": {"type": "image", "required": True, "bind": ["10.inputs.image"]},
        },
        "outputs": ["9"],
        "timeout_seconds": 120,
    }
    doc = parse_template(raw)
    assert isinstance(doc, TemplateDocument)
    assert list(doc.params) == ["prompt", "width", "seed", "sampler", "image"]
    assert doc.params["seed"].random_default
    assert not doc.params["width"].random_default
    assert doc.params["prompt"].required and not doc.params["prompt"].has_default
    assert doc.params["width"].binds() == [("5", "width")]
    assert doc.outputs == ["9"]
    assert doc.timeout_seconds == 120
    # to_dict gives the document back in the operator's format
    assert doc.to_dict() == raw
    assert parse_template(doc.to_dict()) == doc


def test_minimal_document_defaults():
    doc = parse_template({"workflow": {"1": {"class_type": "X", "inputs": {}}}})
    assert doc.description == ""
    assert doc.params == {}
    assert doc.outputs is None
    assert doc.timeout_seconds is None


def test_model_validate_raises_pydantic_error_too():
    with pytest.raises(ValidationError):
        TemplateDocument.model_validate(doc_dict({"p": param("string", foo=1)}))


# ---- param keywords ----------------------------------------------------------------------------


def test_unknown_param_keywords_rejected_and_named():
    errs = one_param_errors(param("integer", default=1, title="x", exclusiveMinimum=0))
    assert_error(
        errs, "params.p.title", "unknown keyword 'title'", "a param may have only: type, required, bind"
    )
    assert_error(errs, "params.p.exclusiveMinimum", "unknown keyword 'exclusiveMinimum'")


def test_unknown_keyword_reported_with_other_problems():
    errs = one_param_errors({"type": "integer", "bind": ["nope"], "colour": 1})
    assert_error(errs, "params.p.colour", "unknown keyword")
    assert_error(errs, "params.p.bind[0]", "'nope'")


def test_type_is_required():
    errs = one_param_errors({"bind": ["1.inputs.width"], "default": 3})
    assert_error(errs, "params.p.type", "'type' is required", "string, integer, number, boolean, image")


@pytest.mark.parametrize("t", ["str", "int", "float", "array", "object", None, 3])
def test_type_must_be_one_of_the_five(t):
    errs = one_param_errors({"type": t, "bind": ["1.inputs.width"]})
    assert_error(errs, "params.p.type", "string, integer, number, boolean, image")


@pytest.mark.parametrize("t", ["string", "integer", "number", "boolean", "image"])
def test_all_five_types_accepted(t):
    doc = parse_template(doc_dict({"p": param(t)}))
    assert doc.params["p"].type == t


def test_required_must_be_boolean():
    errs = one_param_errors(param("string", required="yes"))
    assert_error(errs, "params.p.required", "true or false")


def test_required_with_default_is_an_error():
    errs = one_param_errors(param("integer", required=True, default=3))
    assert_error(errs, "params.p", "required", "default")


def test_required_with_random_default_is_an_error():
    errs = one_param_errors(param("integer", required=True, default="random"))
    assert_error(errs, "params.p", "required", "default")


def test_required_false_with_default_is_fine():
    doc = parse_template(doc_dict({"p": param("integer", required=False, default=3)}))
    assert doc.params["p"].has_default and not doc.params["p"].required


def test_null_default_rejected():
    errs = one_param_errors(param("string", default=None))
    assert_error(errs, "params.p.default", "'default' must not be null")


def test_param_description_must_be_string():
    errs = one_param_errors(param("string", description=5))
    assert_error(errs, "params.p.description", "string")


# ---- bind syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bind",
    [
        "1.width",
        "1.inputs.",
        ".inputs.width",
        "1.input.width",
        "1 .inputs.width",
        "inputs.width",
        "1.inputs. width",
        "",
    ],
)
def test_bind_must_have_node_inputs_name_form(bind):
    errs = one_param_errors(param("integer", bind=bind))
    assert_error(errs, "params.p.bind[0]", repr(bind), "<node id>.inputs.<input name>")


def test_bind_must_be_non_empty_list_of_strings():
    assert_error(one_param_errors(param("integer", bind=[])), "params.p.bind", "at least one")
    assert_error(one_param_errors({"type": "integer"}), "params.p.bind", "'bind' is required")
    assert_error(one_param_errors({"type": "integer", "bind": "1.inputs.width"}), "params.p.bind", "list")
    assert_error(
        one_param_errors(param("integer", bind=["1.inputs.width", 7])), "params.p.bind[1]", "must be a string"
    )


def test_bind_duplicates_rejected():
    errs = one_param_errors(param("integer", bind=["1.inputs.width", "1.inputs.width"]))
    assert_error(errs, "params.p.bind", "bind[1]", "'1.inputs.width'", "twice")


def test_same_input_bound_by_two_params_rejected():
    errs = errors_of(doc_dict({"a": param("integer"), "b": param("integer")}))
    assert_error(errs, "", "'1.inputs.width'", "'a'", "'b'")


def test_multiple_binds_and_parse_bind():
    doc = parse_template(doc_dict({"size": param("integer", bind=["1.inputs.width", "1.inputs.height"])}))
    assert doc.params["size"].binds() == [("1", "width"), ("1", "height")]
    assert parse_bind("10:2.inputs.text") == ("10:2", "text")
    assert parse_bind("7.inputs.a.b") == ("7", "a.b")
    with pytest.raises(ValueError):
        parse_bind("7.outputs.x")


# ---- keyword / type consistency ----------------------------------------------------------------


@pytest.mark.parametrize("kw", ["minimum", "maximum", "multipleOf"])
@pytest.mark.parametrize("t", ["string", "boolean", "image"])
def test_numeric_keywords_only_for_numbers(kw, t):
    errs = one_param_errors(param(t, **{kw: 2}))
    assert_error(errs, "params.p", f"'{kw}'", "integer and number")


@pytest.mark.parametrize("kw", ["minLength", "maxLength"])
@pytest.mark.parametrize("t", ["integer", "number", "boolean", "image"])
def test_length_keywords_only_for_strings(kw, t):
    errs = one_param_errors(param(t, **{kw: 2}))
    assert_error(errs, "params.p", f"'{kw}'", "only to string")


def test_numeric_keywords_must_be_numbers():
    assert_error(one_param_errors(param("integer", minimum="1")), "params.p.minimum", "finite number")
    assert_error(one_param_errors(param("integer", maximum=True)), "params.p.maximum", "finite number")
    assert_error(
        one_param_errors(param("number", multipleOf=float("inf"))), "params.p.multipleOf", "finite number"
    )


def test_multiple_of_must_be_positive():
    assert_error(
        one_param_errors(param("integer", multipleOf=0)), "params.p", "'multipleOf' must be greater than 0"
    )
    assert_error(one_param_errors(param("number", multipleOf=-0.5)), "params.p", "'multipleOf'")


def test_minimum_above_maximum():
    assert_error(
        one_param_errors(param("integer", minimum=5, maximum=4)), "params.p", "'minimum'", "'maximum'"
    )


def test_lengths_must_be_non_negative_integers_and_ordered():
    assert_error(
        one_param_errors(param("string", minLength=-1)), "params.p.minLength", "non-negative integer"
    )
    assert_error(
        one_param_errors(param("string", maxLength=2.0)), "params.p.maxLength", "non-negative integer"
    )
    assert_error(
        one_param_errors(param("string", maxLength=True)), "params.p.maxLength", "non-negative integer"
    )
    assert_error(
        one_param_errors(param("string", minLength=3, maxLength=2)), "params.p", "'minLength'", "'maxLength'"
    )


def test_enum_values_must_have_param_type():
    assert_error(
        one_param_errors(param("integer", enum=[1, "2", True, 3.0])),
        "params.p",
        "enum[1]",
        "enum[2]",
        "enum[3]",
    )
    assert_error(one_param_errors(param("string", enum=["a", 1])), "params.p", "enum[1]")
    assert_error(one_param_errors(param("boolean", enum=[True, 0])), "params.p", "enum[1]")
    # integers are numbers
    doc = parse_template(doc_dict({"p": param("number", enum=[1, 2.5])}))
    assert doc.params["p"].enum == [1, 2.5]


def test_enum_must_be_non_empty_list_without_duplicates():
    assert_error(one_param_errors(param("string", enum=[])), "params.p.enum", "non-empty")
    assert_error(one_param_errors(param("string", enum="a")), "params.p.enum", "non-empty")
    assert_error(one_param_errors(param("string", enum=["a", "b", "a"])), "params.p", "enum[2]", "twice")
    assert_error(one_param_errors(param("number", enum=[1, 1.0])), "params.p", "enum[1]", "twice")


def test_enum_not_for_images():
    assert_error(one_param_errors(param("image", enum=["a.png"])), "params.p", "'enum'", "image")


# ---- defaults must satisfy the param -----------------------------------------------------------


@pytest.mark.parametrize(
    "spec, fragment",
    [
        (param("integer", default=True), "must be an integer, got boolean"),
        (param("integer", default=5.0), "must be an integer"),
        (param("integer", default="5"), "must be an integer, got string"),
        (param("number", default="1.5"), "must be a number"),
        (param("string", default=3), "must be a string"),
        (param("boolean", default=0), "must be a boolean"),
        (param("image", default=""), "non-empty"),
        (param("integer", default=4, minimum=5), ">= 5"),
        (param("integer", default=9, maximum=8), "<= 8"),
        (param("integer", default=12, multipleOf=8), "multiple of 8"),
        (param("number", default=0.35, multipleOf=0.1), "multiple of 0.1"),
        (param("number", default=0.05, minimum=0.1), ">= 0.1"),
        (param("string", default="c", enum=["a", "b"]), "one of"),
        (param("string", default="", minLength=1), "at least 1"),
        (param("string", default="abc", maxLength=2), "at most 2"),
    ],
)
def test_default_must_satisfy_constraints(spec, fragment):
    errs = one_param_errors(spec)
    assert_error(errs, "params.p", "'default'", fragment)


def test_good_defaults():
    doc = parse_template(
        doc_dict(
            {
                "a": param("integer", "1.inputs.width", default=16, minimum=8, maximum=64, multipleOf=8),
                "b": param("number", "2.inputs.sigma", default=0.3, minimum=0.1, maximum=10, multipleOf=0.1),
                "c": param("number", "1.inputs.height", default=2),
                "d": param("string", "3.inputs.filename_prefix", default="x", enum=["x", "y"], maxLength=1),
                "e": param("boolean", "1.inputs.color", default=False),
                "f": param("image", "2.inputs.blur_radius", default="example.png"),
            }
        )
    )
    assert doc.params["b"].default == 0.3


@pytest.mark.parametrize("t", ["number", "boolean"])
def test_random_default_only_for_integer(t):
    errs = one_param_errors(param(t, default="random"))
    assert_error(errs, "params.p", "'random' default is only allowed for integer")


def test_random_string_default_is_just_a_string():
    # For a string param "random" has no special meaning: it is an ordinary default value.
    doc = parse_template(doc_dict({"p": param("string", default="random")}))
    assert doc.params["p"].default == "random"
    assert not doc.params["p"].random_default


def test_random_default_with_bounds():
    doc = parse_template(
        doc_dict({"p": param("integer", default="random", minimum=10, maximum=20, multipleOf=4)})
    )
    assert doc.params["p"].random_range() == (12, 20, 4)
    plain = parse_template(doc_dict({"p": param("integer", default="random")}))
    assert plain.params["p"].random_range() == (0, 2**53 - 1, 1)
    assert_error(
        one_param_errors(param("integer", default="random", maximum=-1)), "params.p", "no", "[0, 2^53)"
    )
    assert_error(one_param_errors(param("integer", default="random", minimum=2**53)), "params.p", "[0, 2^53)")
    assert_error(one_param_errors(param("integer", default="random", enum=[1, 2])), "params.p", "'enum'")
    assert_error(
        one_param_errors(param("integer", default="random", multipleOf=1.5)),
        "params.p",
        "integral 'multipleOf'",
    )


# ---- document level ----------------------------------------------------------------------------


def test_unknown_document_keys_rejected():
    errs = errors_of(doc_dict({}, name="x", output=["3"]))
    assert_error(errs, "name", "unknown key 'name'", "a template may have only: description, workflow")
    assert_error(errs, "output", "unknown key 'output'")


def test_workflow_required_object_non_empty():
    raw = doc_dict({})
    del raw["workflow"]
    assert_error(errors_of(raw), "workflow")
    assert_error(errors_of(doc_dict({}, workflow=[])), "workflow", "API-format graph")
    assert_error(errors_of(doc_dict({}, workflow={})), "workflow", "no nodes")


def test_params_must_be_object_with_valid_names():
    assert_error(errors_of(doc_dict([])), "params", "object")
    assert_error(
        errors_of(doc_dict({"bad name": param("integer"), "1x": param("integer", "1.inputs.height")})),
        "params",
        "'bad name'",
        "'1x'",
    )


def test_outputs_validation():
    assert_error(errors_of(doc_dict({}, outputs=[])), "outputs", "non-empty")
    assert_error(errors_of(doc_dict({}, outputs="3")), "outputs", "non-empty list")
    assert_error(errors_of(doc_dict({}, outputs=[3])), "outputs", "outputs[0]", "string")
    assert_error(errors_of(doc_dict({}, outputs=["3", "3"])), "outputs", "outputs[1]", "twice")


@pytest.mark.parametrize("bad", [0, -1, "10", True, float("nan"), float("inf")])
def test_timeout_seconds_must_be_positive_number(bad):
    assert_error(errors_of(doc_dict({}, timeout_seconds=bad)), "timeout_seconds", "positive number")


def test_timeout_seconds_accepts_int_and_float():
    assert parse_template(doc_dict({}, timeout_seconds=1.5)).timeout_seconds == 1.5
    assert parse_template(doc_dict({}, timeout_seconds=600)).timeout_seconds == 600


def test_document_description_must_be_string():
    assert_error(errors_of(doc_dict({}, description=None)), "description", "string")


def test_parse_template_rejects_non_object():
    with pytest.raises(TemplateInvalid) as ei:
        parse_template(["not", "a", "dict"])
    assert ei.value.errors == [{"field": "", "message": "a template must be a JSON object, got array"}]


def test_all_problems_reported_together():
    errs = errors_of(
        doc_dict(
            {"a": param("integer", default="x"), "b": param("strin")},
            outputs=[],
            timeout_seconds=-1,
        )
    )
    fields = {e["field"] for e in errs}
    assert {"params.a", "params.b.type", "outputs", "timeout_seconds"} <= fields


def test_param_spec_direct():
    spec = ParamSpec.model_validate({"type": "integer", "bind": ["1.inputs.width"], "default": 3})
    assert spec.to_dict() == {"type": "integer", "bind": ["1.inputs.width"], "default": 3}


# ---- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["txt2img", "a", "0", "sd15.txt2img-v2_fast", "a" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Txt2img", "-x", "_x", ".x", "a b", "a/b", "a" * 65, "é", None, 5])
def test_invalid_names(name):
    with pytest.raises(TemplateInvalid) as ei:
        validate_name(name)
    assert ei.value.errors[0]["field"] == "name"
    assert repr(name) in ei.value.errors[0]["message"]


# ---- the OpenAI mapping --------------------------------------------------------------------------


def test_openai_mapping_names_params_of_the_right_type():
    params = {
        "w": param("integer"),
        "h": param("integer", "1.inputs.height"),
        "c": param("string", "1.inputs.color"),
    }
    good = parse_template(doc_dict(params, openai={"prompt": "c", "size": ["w", "h"]}))
    assert good.to_dict()["openai"] == {"prompt": "c", "size": ["w", "h"]}
    # `prompt` must name a string param, every name must be a param, and a mask needs its image.
    errs = errors_of(doc_dict(params, openai={"prompt": "w", "size": ["w", "nope"], "mask": "w"}))
    assert_error(
        errs,
        "openai",
        "openai.prompt must name a string param",
        "openai.size[1] names no param ('nope')",
        "openai.mask must name an image param",
        "openai.mask needs openai.image",
    )
    assert_error(errors_of(doc_dict(params, openai={"size": ["w", "h"]})), "openai.prompt", "required")
    assert_error(
        errors_of(doc_dict(params, openai={"prompt": "c", "steps": "w"})), "openai.steps", "unknown key"
    )
