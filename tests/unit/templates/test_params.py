"""params_schema, resolve_params, render and output_nodes."""

from __future__ import annotations

import copy
import json
import random

import jsonschema
import pytest

from app.templates import (
    IMAGE_FORMAT,
    KNOWN_OUTPUT_CLASSES,
    MAX_IMAGE_REF_LENGTH,
    ParamsInvalid,
    output_nodes,
    params_schema,
    parse_template,
    render,
    resolve_params,
)

from .helpers import BLUR_WORKFLOW, doc_dict, param


def make_doc():
    """Every param type and keyword over a small graph."""
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["4", 1]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "6": {
            "class_type": "KSampler",
            "inputs": {"seed": 0, "sampler_name": "euler", "cfg": 8, "denoise": 1},
        },
        "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "11": {"class_type": "Toggle", "inputs": {"on": False}},
    }
    return parse_template(
        {
            "description": "all kinds",
            "workflow": workflow,
            "params": {
                "prompt": {
                    "type": "string",
                    "required": True,
                    "minLength": 1,
                    "maxLength": 20,
                    "description": "The prompt.",
                    "bind": ["5.inputs.text"],
                },
                "size": {
                    "type": "integer",
                    "default": 64,
                    "minimum": 8,
                    "maximum": 256,
                    "multipleOf": 8,
                    "bind": ["1.inputs.width", "1.inputs.height"],
                },
                "seed": {
                    "type": "integer",
                    "default": "random",
                    "description": "Seed.",
                    "bind": ["6.inputs.seed"],
                },
                "sampler": {
                    "type": "string",
                    "enum": ["euler", "dpmpp_2m"],
                    "default": "euler",
                    "bind": ["6.inputs.sampler_name"],
                },
                "cfg": {
                    "type": "number",
                    "default": 7.5,
                    "minimum": 1,
                    "maximum": 30,
                    "bind": ["6.inputs.cfg"],
                },
                "sigma": {
                    "type": "number",
                    "default": 1.0,
                    "minimum": 0.1,
                    "maximum": 10,
                    "multipleOf": 0.1,
                    "bind": ["2.inputs.sigma"],
                },
                "flag": {"type": "boolean", "default": True, "bind": ["11.inputs.on"]},
                "image": {
                    "type": "image",
                    "required": True,
                    "description": "Input.",
                    "bind": ["10.inputs.image"],
                },
                "checkpoint": {"type": "string", "bind": ["4.inputs.ckpt_name"]},
            },
            "outputs": ["3"],
        }
    )


GOOD = {"prompt": "a cat", "image": "upload:abc123"}


def validator(doc):
    schema = params_schema(doc)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ---- params_schema -----------------------------------------------------------------------------


def test_params_schema_shape():
    doc = make_doc()
    schema = params_schema(doc)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["prompt", "image"]
    assert list(schema["properties"]) == list(doc.params)
    props = schema["properties"]
    assert props["prompt"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 20,
        "description": "The prompt.",
    }
    assert props["size"] == {"type": "integer", "minimum": 8, "maximum": 256, "multipleOf": 8, "default": 64}
    assert props["sampler"] == {"type": "string", "enum": ["euler", "dpmpp_2m"], "default": "euler"}
    assert props["cfg"] == {"type": "number", "minimum": 1, "maximum": 30, "default": 7.5}
    assert props["flag"] == {"type": "boolean", "default": True}
    assert props["checkpoint"] == {"type": "string"}
    # binds are internal
    assert all("bind" not in p for p in props.values())
    # the schema is plain JSON
    assert json.loads(json.dumps(schema)) == schema


def test_params_schema_random_default_is_a_note_not_a_default():
    seed = params_schema(make_doc())["properties"]["seed"]
    assert seed["type"] == "integer"
    assert "default" not in seed
    assert seed["description"].startswith("Seed. ")
    assert "random integer in [0, 2^53)" in seed["description"]


def test_params_schema_random_note_states_narrowed_range():
    doc = parse_template(doc_dict({"s": param("integer", default="random", minimum=1, maximum=100)}))
    assert "random integer in [1, 100]" in params_schema(doc)["properties"]["s"]["description"]


def test_params_schema_image():
    image = params_schema(make_doc())["properties"]["image"]
    assert image["type"] == "string"
    assert image["format"] == IMAGE_FORMAT == "comfy-gateway-image"
    assert image["minLength"] == 1 and image["maxLength"] == MAX_IMAGE_REF_LENGTH
    assert image["description"].startswith("Input. ")
    assert "upload id" in image["description"]


def test_params_schema_of_template_without_params():
    schema = params_schema(parse_template(doc_dict({})))
    assert schema["properties"] == {} and schema["required"] == []
    jsonschema.validate({}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"x": 1}, schema)


def test_resolved_params_validate_against_schema():
    doc = make_doc()
    v = validator(doc)
    for given in (
        GOOD,
        {
            **GOOD,
            "size": 256,
            "sampler": "dpmpp_2m",
            "cfg": 1,
            "sigma": 0.5,
            "flag": False,
            "seed": 5,
            "checkpoint": "b",
        },
        {**GOOD, "cfg": 29.5, "size": 8},
    ):
        v.validate(given)  # the input itself is valid per the schema
        v.validate(resolve_params(doc, given))  # and so is the resolved form


@pytest.mark.parametrize(
    "bad",
    [
        {},  # required missing
        {"image": "x"},
        {**GOOD, "extra": 1},
        {**GOOD, "prompt": 5},
        {**GOOD, "prompt": ""},
        {**GOOD, "prompt": "x" * 21},
        {**GOOD, "size": 4},
        {**GOOD, "size": 260},
        {**GOOD, "size": 12},
        {**GOOD, "size": True},
        {**GOOD, "size": "64"},
        {**GOOD, "seed": "random"},
        {**GOOD, "seed": 1.5},
        {**GOOD, "sampler": "ddim"},
        {**GOOD, "cfg": 0.5},
        {**GOOD, "cfg": 31},
        {**GOOD, "cfg": "7"},
        {**GOOD, "sigma": 0.25},
        {**GOOD, "flag": 1},
        {**GOOD, "flag": "true"},
        {**GOOD, "image": ""},
        {**GOOD, "image": 3},
        {**GOOD, "image": "x" * (MAX_IMAGE_REF_LENGTH + 1)},
        {**GOOD, "checkpoint": None},
    ],
)
def test_invalid_params_fail_both_schema_and_resolution(bad):
    doc = make_doc()
    assert not validator(doc).is_valid(bad)
    with pytest.raises(ParamsInvalid):
        resolve_params(doc, bad)


# ---- resolve_params ----------------------------------------------------------------------------


def test_defaults_filled_and_order():
    doc = make_doc()
    r = resolve_params(doc, GOOD, rng=random.Random(1))
    assert list(r) == ["prompt", "size", "seed", "sampler", "cfg", "sigma", "flag", "image"]
    assert r["size"] == 64 and r["sampler"] == "euler" and r["cfg"] == 7.5 and r["flag"] is True
    assert r["sigma"] == 1.0
    # optional without a default and not given: left out, the workflow keeps its value
    assert "checkpoint" not in r
    assert isinstance(r["seed"], int) and not isinstance(r["seed"], bool)


def test_given_values_are_kept():
    doc = make_doc()
    given = {**GOOD, "size": 128, "seed": 42, "cfg": 3, "checkpoint": "b.safetensors", "flag": False}
    r = resolve_params(doc, given)
    for k, v in given.items():
        assert r[k] == v and type(r[k]) is type(v)


def test_random_seed_in_range_and_differs():
    doc = make_doc()
    seeds = {resolve_params(doc, GOOD)["seed"] for _ in range(50)}
    assert len(seeds) > 45  # 50 draws from 2^53 values: a collision is practically impossible
    assert all(isinstance(s, int) and 0 <= s < 2**53 for s in seeds)


def test_random_seed_uses_given_rng():
    doc = make_doc()
    a = resolve_params(doc, GOOD, rng=random.Random(7))["seed"]
    b = resolve_params(doc, GOOD, rng=random.Random(7))["seed"]
    assert a == b
    assert 0 <= a < 2**53


def test_random_seed_covers_high_range():
    # With 2^53 values, a draw should be >= 2^52 about half the time; make sure the range is not
    # accidentally 32-bit.
    doc = make_doc()
    rng = random.Random(123)
    seeds = [resolve_params(doc, GOOD, rng=rng)["seed"] for _ in range(200)]
    assert max(seeds) >= 2**52
    assert max(seeds) < 2**53


def test_random_seed_respects_bounds_and_step():
    doc = parse_template(
        doc_dict({"s": param("integer", default="random", minimum=10, maximum=30, multipleOf=5)})
    )
    rng = random.Random(0)
    seen = {resolve_params(doc, {}, rng=rng)["s"] for _ in range(300)}
    assert seen == {10, 15, 20, 25, 30}


def test_random_seed_upper_bound_at_limit():
    doc = parse_template(doc_dict({"s": param("integer", default="random", minimum=2**53 - 2)}))
    rng = random.Random(0)
    assert {resolve_params(doc, {}, rng=rng)["s"] for _ in range(100)} == {2**53 - 2, 2**53 - 1}


def test_explicit_seed_overrides_random():
    assert resolve_params(make_doc(), {**GOOD, "seed": 0})["seed"] == 0


def errors_for(doc, params) -> list[dict]:
    with pytest.raises(ParamsInvalid) as ei:
        resolve_params(doc, params)
    return ei.value.errors


def messages(errors, name) -> str:
    return " | ".join(e["message"] for e in errors if e["param"] == name)


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_an_integer(value):
    errs = errors_for(make_doc(), {**GOOD, "size": value})
    assert errs == [{"param": "size", "message": "must be an integer, got boolean"}]


def test_bool_is_not_a_number():
    errs = errors_for(make_doc(), {**GOOD, "cfg": True})
    assert errs == [{"param": "cfg", "message": "must be a number, got boolean"}]


def test_integral_float_is_not_an_integer():
    errs = errors_for(make_doc(), {**GOOD, "size": 64.0})
    assert [e["param"] for e in errs] == ["size"]
    assert "must be an integer" in errs[0]["message"] and "64.0" in errs[0]["message"]


def test_integers_are_fine_for_numbers():
    r = resolve_params(make_doc(), {**GOOD, "cfg": 12})
    assert r["cfg"] == 12 and type(r["cfg"]) is int


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_rejected(value):
    errs = errors_for(make_doc(), {**GOOD, "cfg": value})
    assert errs[0]["param"] == "cfg" and "finite" in errs[0]["message"]


def test_integer_min_max_multiple():
    doc = make_doc()
    assert messages(errors_for(doc, {**GOOD, "size": 0}), "size") == "must be >= 8, got 0"
    assert "<= 256" in messages(errors_for(doc, {**GOOD, "size": 264}), "size")
    assert "multiple of 8" in messages(errors_for(doc, {**GOOD, "size": 100}), "size")
    # both bound and step broken: both reported
    m = messages(errors_for(doc, {**GOOD, "size": 300}), "size")
    assert "<= 256" in m and "multiple of 8" in m


def test_number_min_max_multiple_with_floats():
    doc = make_doc()
    assert "<= 30" in messages(errors_for(doc, {**GOOD, "cfg": 30.01}), "cfg")
    assert ">= 1" in messages(errors_for(doc, {**GOOD, "cfg": 0.99}), "cfg")
    assert "multiple of 0.1" in messages(errors_for(doc, {**GOOD, "sigma": 0.15}), "sigma")
    assert ">= 0.1" in messages(errors_for(doc, {**GOOD, "sigma": 0.0}), "sigma")
    for ok in (0.1, 0.3, 0.7, 2.2, 9.9, 10, 1):
        assert resolve_params(doc, {**GOOD, "sigma": ok})["sigma"] == ok


def test_multiple_of_is_decimal_exact_where_float_division_is_not():
    # 0.3 / 0.1 == 2.9999999999999996 in binary floating point; 0.3 is still a multiple of 0.1
    # as written, and the gateway accepts it. Known divergence: the jsonschema library (float
    # division) rejects it, so a client validating with the published schema is stricter here.
    assert not (0.3 / 0.1).is_integer()
    doc = make_doc()
    assert resolve_params(doc, {**GOOD, "sigma": 0.3})["sigma"] == 0.3
    assert not validator(doc).is_valid({**GOOD, "sigma": 0.3})


def test_enum():
    errs = errors_for(make_doc(), {**GOOD, "sampler": "ddim"})
    assert errs == [{"param": "sampler", "message": "must be one of 'euler', 'dpmpp_2m'; got 'ddim'"}]


def test_lengths():
    doc = make_doc()
    assert "at least 1" in messages(errors_for(doc, {**GOOD, "prompt": ""}), "prompt")
    assert "at most 20" in messages(errors_for(doc, {**GOOD, "prompt": "x" * 21}), "prompt")
    assert resolve_params(doc, {**GOOD, "prompt": "é" * 20})["prompt"] == "é" * 20  # code points


def test_image_values():
    doc = make_doc()
    for ok in (
        "upload:abc",
        "https://example.com/a.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "x" * MAX_IMAGE_REF_LENGTH,
    ):
        assert resolve_params(doc, {**GOOD, "image": ok})["image"] == ok
    assert "non-empty" in messages(errors_for(doc, {**GOOD, "image": ""}), "image")
    assert "non-empty" in messages(errors_for(doc, {**GOOD, "image": "   "}), "image")
    assert "too long" in messages(
        errors_for(doc, {**GOOD, "image": "x" * (MAX_IMAGE_REF_LENGTH + 1)}), "image"
    )
    assert "got object" in messages(errors_for(doc, {**GOOD, "image": {"id": "x"}}), "image")


def test_missing_required():
    errs = errors_for(make_doc(), {})
    assert errs == [
        {"param": "prompt", "message": "required param is missing"},
        {"param": "image", "message": "required param is missing"},
    ]


def test_unknown_params_all_named():
    errs = errors_for(make_doc(), {**GOOD, "steps": 20, "negative": "x", "Seed": 1})
    unknown = [e for e in errs if "unknown" in e["message"]]
    assert [e["param"] for e in unknown] == ["steps", "negative", "Seed"]
    for e in unknown:
        assert repr(e["param"]) in e["message"]
        assert "prompt, size, seed" in e["message"]  # the known ones are listed
    assert len(errs) == 3


def test_unknown_params_on_template_without_params():
    doc = parse_template(doc_dict({}))
    assert resolve_params(doc, {}) == {}
    assert resolve_params(doc, None) == {}
    errs = errors_for(doc, {"a": 1})
    assert errs == [{"param": "a", "message": "unknown param 'a'; this template takes no params"}]


def test_all_problems_at_once():
    errs = errors_for(make_doc(), {"zzz": 1, "size": True, "cfg": 100, "sampler": "x", "image": ""})
    assert {e["param"] for e in errs} == {"zzz", "prompt", "size", "cfg", "sampler", "image"}


def test_null_value_is_not_a_default():
    errs = errors_for(make_doc(), {**GOOD, "size": None})
    assert errs == [{"param": "size", "message": "must be an integer, got null"}]


def test_params_not_an_object():
    for bad in ([1], "x", 3):
        errs = errors_for(make_doc(), bad)
        assert errs == [{"param": None, "message": "params must be a JSON object"}]


def test_str_of_params_invalid_names_params():
    with pytest.raises(ParamsInvalid) as ei:
        resolve_params(make_doc(), {"bogus": 1})
    assert "bogus" in str(ei.value) and "prompt" in str(ei.value)


def test_resolve_does_not_share_default_objects():
    # defaults are copied: changing a resolved value never changes the template
    doc = make_doc()
    r = resolve_params(doc, GOOD)
    r["sampler"] = "changed"
    assert doc.params["sampler"].default == "euler"


# ---- render ------------------------------------------------------------------------------------


def test_render_replaces_whole_values_and_keeps_the_rest():
    doc = make_doc()
    before = copy.deepcopy(doc.workflow)
    r = resolve_params(doc, {**GOOD, "size": 128, "checkpoint": "b.safetensors"}, rng=random.Random(3))
    wf = render(doc, r)
    assert wf["5"]["inputs"]["text"] == "a cat"
    assert wf["1"]["inputs"]["width"] == 128 and wf["1"]["inputs"]["height"] == 128
    assert wf["6"]["inputs"]["seed"] == r["seed"]
    assert wf["6"]["inputs"]["sampler_name"] == "euler"
    assert wf["6"]["inputs"]["cfg"] == 7.5
    assert wf["10"]["inputs"]["image"] == "upload:abc123"
    assert wf["11"]["inputs"]["on"] is True
    assert wf["4"]["inputs"]["ckpt_name"] == "b.safetensors"
    # untouched inputs, links and other keys stay
    assert wf["2"]["inputs"]["image"] == ["1", 0]
    assert wf["1"]["inputs"]["batch_size"] == 1
    assert wf["3"] == before["3"]
    # the template is not modified
    assert doc.workflow == before


def test_render_returns_independent_copy():
    doc = make_doc()
    wf = render(doc, resolve_params(doc, GOOD))
    wf["2"]["inputs"]["image"].append("mutated")
    wf["3"]["inputs"]["filename_prefix"] = "mutated"
    assert doc.workflow["2"]["inputs"]["image"] == ["1", 0]
    assert doc.workflow["3"]["inputs"]["filename_prefix"] == "x"
    wf2 = render(doc, resolve_params(doc, GOOD))
    assert wf2["2"]["inputs"]["image"] == ["1", 0]


def test_render_never_splices_text():
    doc = make_doc()
    nasty = 'a", "class_type": "Evil'
    wf = render(doc, resolve_params(doc, {**GOOD, "prompt": nasty[:20]}))
    assert wf["5"]["inputs"]["text"] == nasty[:20]
    assert wf["5"]["class_type"] == "CLIPTextEncode"
    assert json.loads(json.dumps(wf))["5"]["inputs"]["text"] == nasty[:20]


def test_render_leaves_optional_unset_params_alone():
    doc = make_doc()
    wf = render(doc, resolve_params(doc, GOOD))
    assert wf["4"]["inputs"]["ckpt_name"] == "a.safetensors"


def test_render_rejects_keys_that_are_not_params():
    doc = make_doc()
    with pytest.raises(ValueError, match="nope"):
        render(doc, {"nope": 1})


def test_render_seed_is_the_resolved_one_and_exact():
    doc = make_doc()
    r = resolve_params(doc, {**GOOD, "seed": 2**53 - 1})
    assert render(doc, r)["6"]["inputs"]["seed"] == 2**53 - 1


# ---- output_nodes ------------------------------------------------------------------------------


def test_output_nodes_explicit():
    assert output_nodes(make_doc()) == ["3"]


def test_output_nodes_from_known_classes_without_object_info():
    raw = doc_dict({})
    raw["workflow"]["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    raw["workflow"]["5"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["2", 0]}}
    raw["workflow"]["6"] = {"class_type": "MyCustomSaver", "inputs": {"images": ["2", 0]}}
    assert output_nodes(parse_template(raw)) == ["3", "4", "5"]


def test_output_nodes_from_object_info(object_info_full):
    raw = doc_dict({})
    raw["workflow"]["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    raw["workflow"]["6"] = {"class_type": "MyCustomSaver", "inputs": {"images": ["2", 0]}}
    oi = dict(object_info_full)
    oi["MyCustomSaver"] = {"input": {"required": {"images": ["IMAGE"]}}, "output": [], "output_node": True}
    assert output_nodes(parse_template(raw), oi) == ["3", "4", "6"]
    # object_info is authoritative for the classes it describes
    oi["SaveImage"] = {**oi["SaveImage"], "output_node": False}
    assert output_nodes(parse_template(raw), oi) == ["4", "6"]
    # classes it does not describe fall back to the known set
    assert output_nodes(parse_template(raw), {}) == ["3", "4"]


def test_known_output_classes_cover_recorded_output_nodes(object_info_full):
    recorded = {name for name, info in object_info_full.items() if info.get("output_node") is True}
    recorded -= {"HarnessSlowSampler", "HarnessFail"}  # the recording's test nodes
    assert recorded <= KNOWN_OUTPUT_CLASSES
    for name in (
        "SaveImage",
        "PreviewImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveVideo",
        "SaveWEBM",
        "SaveAudio",
    ):
        assert name in KNOWN_OUTPUT_CLASSES
    # and none of the known classes that the recording has is a non-output node there
    for name in KNOWN_OUTPUT_CLASSES & set(object_info_full):
        assert object_info_full[name]["output_node"] is True, name


def test_blur_workflow_helper_untouched():
    # guard against tests sharing mutable module state
    assert BLUR_WORKFLOW["3"]["inputs"]["filename_prefix"] == "harness_blur"
