"""check_template: binds, graph structure, outputs, with and without /object_info."""

from __future__ import annotations

import copy

import pytest

from app.templates import TemplateInvalid, check_template, parse_template

from .helpers import BLUR_WORKFLOW, doc_dict, param


def check_errors(raw: dict, object_info: dict | None = None) -> list[dict]:
    with pytest.raises(TemplateInvalid) as ei:
        check_template(parse_template(raw), object_info)
    return ei.value.errors


def assert_error(errors: list[dict], field: str, *fragments: str) -> None:
    matching = [e for e in errors if e["field"] == field]
    assert matching, f"no error for field {field!r}: {errors}"
    text = " ".join(e["message"] for e in matching)
    for frag in fragments:
        assert frag in text, f"{frag!r} not in {text!r}"


def good_params() -> dict:
    return {
        "width": param("integer", "1.inputs.width", default=64),
        "radius": param("integer", "2.inputs.blur_radius", default=3),
        "prefix": param("string", "3.inputs.filename_prefix", default="x"),
    }


def test_good_template_passes_without_and_with_object_info(object_info_full, object_info_selected):
    doc = parse_template(doc_dict(good_params(), outputs=["3"]))
    assert check_template(doc) is None
    assert check_template(doc, object_info_full) is None
    assert check_template(doc, object_info_selected) is None


def test_check_template_accepts_raw_document():
    assert check_template(doc_dict(good_params())) is None
    with pytest.raises(TemplateInvalid):
        check_template(doc_dict({"p": param("integer", "9.inputs.width")}))


def test_bind_to_missing_node():
    errs = check_errors(doc_dict({"w": param("integer", ["1.inputs.width", "99.inputs.width"])}))
    assert errs == [
        {"field": "params.w.bind[1]", "message": "'99.inputs.width': node '99' is not in the workflow"}
    ]


def test_bind_to_missing_input_without_object_info():
    errs = check_errors(doc_dict({"w": param("integer", "1.inputs.widht")}))
    assert_error(errs, "params.w.bind[0]", "has no input 'widht'", "its inputs are:", "width")


def test_input_declared_by_class_counts_with_object_info(object_info_full):
    # EmptyImage declares "color"; remove it from the workflow node: without object_info the
    # bind is unknown, with object_info it is fine.
    raw = doc_dict({"c": param("integer", "1.inputs.color", default=0)})
    del raw["workflow"]["1"]["inputs"]["color"]
    assert_error(check_errors(raw), "params.c.bind[0]", "has no input 'color'")
    check_template(parse_template(raw), object_info_full)


def test_optional_input_declared_counts(object_info_full):
    # RegexReplace declares "count" as an optional INT widget.
    assert "count" in object_info_full["RegexReplace"]["input"]["optional"]
    raw = doc_dict({"n": param("integer", "9.inputs.count", default=0)})
    raw["workflow"]["9"] = {
        "class_type": "RegexReplace",
        "inputs": {"string": "abc", "regex_pattern": "b", "replace": "x"},
    }
    assert_error(check_errors(raw), "params.n.bind[0]", "has no input 'count'")
    check_template(parse_template(raw), object_info_full)


def test_hidden_inputs_do_not_count(object_info_full):
    errs = check_errors(doc_dict({"p": param("string", "3.inputs.prompt")}), object_info_full)
    assert_error(errs, "params.p.bind[0]", "has no input 'prompt'")


def test_unknown_input_with_object_info_lists_inputs(object_info_full):
    errs = check_errors(doc_dict({"p": param("integer", "2.inputs.radius")}), object_info_full)
    assert_error(errs, "params.p.bind[0]", "ImageBlur", "has no input 'radius'", "blur_radius", "sigma")


def test_binding_over_a_link_is_refused(object_info_full):
    raw = doc_dict({"img": param("image", "2.inputs.image")})
    for oi in (None, object_info_full):
        errs = check_errors(raw, oi)
        assert_error(errs, "params.img.bind[0]", "holds a link", "['1', 0]", "cut the graph")


def test_binding_a_declared_socket_input_is_refused(object_info_full):
    # The workflow leaves ImageBlur's IMAGE input out; object_info says it is a socket.
    raw = doc_dict({"img": param("string", "2.inputs.image")})
    del raw["workflow"]["2"]["inputs"]["image"]
    errs = check_errors(raw, object_info_full)
    assert_error(errs, "params.img.bind[0]", "takes a link of type IMAGE")


def test_force_input_widget_is_a_socket():
    oi = {
        "N": {"input": {"required": {"x": ["INT", {"forceInput": True}]}}, "output": [], "output_node": True},
    }
    raw = {
        "workflow": {"1": {"class_type": "N", "inputs": {}}},
        "params": {"x": param("integer", "1.inputs.x")},
    }
    assert_error(check_errors(raw, oi), "params.x.bind[0]", "takes a link of type INT")


@pytest.mark.parametrize(
    "node, field, fragment",
    [
        ({"inputs": {}}, "workflow.9.class_type", "class_type"),
        ({"class_type": "", "inputs": {}}, "workflow.9.class_type", "class_type"),
        ({"class_type": 5, "inputs": {}}, "workflow.9.class_type", "class_type"),
        ({"class_type": "PreviewImage"}, "workflow.9.inputs", "'inputs' object"),
        ({"class_type": "PreviewImage", "inputs": [1]}, "workflow.9.inputs", "'inputs' object"),
        ("PreviewImage", "workflow.9", "must be an object"),
    ],
)
def test_malformed_nodes(node, field, fragment):
    raw = doc_dict({})
    raw["workflow"]["9"] = node
    assert_error(check_errors(raw), field, fragment)


def test_bind_into_malformed_node_is_reported():
    raw = doc_dict({"p": param("string", "9.inputs.x")})
    raw["workflow"]["9"] = {"class_type": "PreviewImage"}
    errs = check_errors(raw)
    assert_error(errs, "workflow.9.inputs")
    assert_error(errs, "params.p.bind[0]", "malformed")


def test_links_must_be_well_formed_and_point_to_nodes(object_info_full):
    raw = doc_dict({})
    raw["workflow"]["2"]["inputs"]["image"] = ["7", 0]
    assert_error(check_errors(raw), "workflow.2.inputs.image", "node '7'", "not in the workflow")
    raw["workflow"]["2"]["inputs"]["image"] = ["1", 0, 1]
    assert_error(check_errors(raw), "workflow.2.inputs.image", "[node id, output index]")
    raw["workflow"]["2"]["inputs"]["image"] = [1, 0]
    assert_error(check_errors(raw), "workflow.2.inputs.image", "[node id, output index]")
    raw["workflow"]["2"]["inputs"]["image"] = ["1", 3]  # EmptyImage has one output
    check_template(parse_template(raw))  # cannot be told without object_info
    assert_error(check_errors(raw, object_info_full), "workflow.2.inputs.image", "output 3", "1 output(s)")


def test_unknown_class_with_object_info(object_info_full):
    raw = doc_dict({})
    raw["workflow"]["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    check_template(parse_template(raw))
    assert_error(
        check_errors(raw, object_info_full), "workflow.9.class_type", "unknown node class 'NoSuchNode'"
    )


def test_outputs_must_name_workflow_nodes():
    errs = check_errors(doc_dict({}, outputs=["3", "42"]))
    assert errs == [{"field": "outputs[1]", "message": "node '42' is not in the workflow"}]


def test_outputs_must_be_output_nodes_with_object_info(object_info_full):
    raw = doc_dict({}, outputs=["2"])
    check_template(parse_template(raw))  # no object_info: only existence is checked
    assert_error(check_errors(raw, object_info_full), "outputs[0]", "'2'", "ImageBlur", "not an output node")


def test_workflow_without_output_node(object_info_full):
    raw = doc_dict({})
    del raw["workflow"]["3"]
    check_template(parse_template(raw))  # cannot be told without object_info
    assert_error(check_errors(raw, object_info_full), "workflow", "no output node")


def test_preview_image_counts_as_output_node(object_info_full):
    raw = doc_dict({})
    raw["workflow"]["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    check_template(parse_template(raw), object_info_full)


def test_all_errors_reported_at_once(object_info_full):
    raw = doc_dict(
        {
            "a": param("integer", "99.inputs.width"),
            "b": param("integer", "1.inputs.nope"),
            "c": param("image", "3.inputs.images"),
        },
        outputs=["1", "77"],
    )
    raw["workflow"]["4"] = {"class_type": "EmptyImage"}
    errs = check_errors(raw, object_info_full)
    fields = [e["field"] for e in errs]
    assert fields == [
        "workflow.4.inputs",
        "params.a.bind[0]",
        "params.b.bind[0]",
        "params.c.bind[0]",
        "outputs[0]",
        "outputs[1]",
    ]
    assert all(e["message"] for e in errs)


def test_check_does_not_modify_document(object_info_full):
    raw = doc_dict(good_params(), outputs=["3"])
    doc = parse_template(raw)
    before = copy.deepcopy(doc.workflow)
    check_template(doc, object_info_full)
    assert doc.workflow == before == BLUR_WORKFLOW
