"""The built-in templates, checked against the recorded ComfyUI /object_info, and the loader."""

from __future__ import annotations

import ast
import json
import random
import sys
from pathlib import Path

import jsonschema
import pytest

from app.templates import (
    TemplateDocument,
    TemplateInvalid,
    check_template,
    load_builtin,
    load_directory,
    output_nodes,
    params_schema,
    parse_template_json,
    render,
    resolve_params,
)

from .helpers import recording

BUILTIN_NAMES = {"txt2img", "img2img", "blur", "resize"}
PACKAGE_DIR = Path(__file__).resolve().parents[3] / "app" / "templates"

# Inputs whose choices are files on the server: the recorded server had no checkpoints and a few
# input images, so their recorded choices say nothing about other servers.
SERVER_FILE_INPUTS = {("CheckpointLoaderSimple", "ckpt_name"), ("LoadImage", "image")}


@pytest.fixture(scope="module")
def builtin() -> dict[str, TemplateDocument]:
    return load_builtin()


def input_spec(object_info, class_type, name):
    inputs = object_info[class_type]["input"]
    for section in ("required", "optional"):
        if name in inputs.get(section, {}):
            return inputs[section][name]
    raise AssertionError(f"{class_type} has no input {name!r}")


def choices(spec):
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return spec[1]["options"]
    return None


def test_builtin_names(builtin):
    assert set(builtin) == BUILTIN_NAMES
    assert all(isinstance(d, TemplateDocument) for d in builtin.values())


@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_builtin_passes_check_with_full_object_info(builtin, object_info_full, name):
    check_template(builtin[name], object_info_full)


def test_builtins_pass_with_partial_object_info(builtin, object_info_full, object_info_selected):
    # object_info_selected.json has every class of txt2img, blur and resize (not VAEEncode).
    for name in ("blur", "resize", "txt2img"):
        check_template(builtin[name], object_info_selected)
    # /object_info/EmptyImage as recorded is the same definition as in the full listing
    single = recording("object_info_EmptyImage.json")
    assert single["EmptyImage"] == object_info_full["EmptyImage"]
    with pytest.raises(TemplateInvalid) as ei:
        check_template(builtin["img2img"], object_info_selected)
    assert ei.value.errors == [
        {
            "field": "workflow.11.class_type",
            "message": "unknown node class 'VAEEncode': the server does not have it",
        }
    ]


@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_builtin_graph_is_complete_and_well_typed(builtin, object_info_full, name):
    """Every node's inputs are exactly what its class declares (all required ones present, no
    stray ones), links point at outputs of the right type, and literal values fit the widgets."""
    wf = builtin[name].workflow
    for node_id, node in wf.items():
        info = object_info_full[node["class_type"]]
        required = set(info["input"].get("required", {}))
        optional = set(info["input"].get("optional", {}))
        given = set(node["inputs"])
        assert required <= given, (node_id, required - given)
        assert given <= required | optional, (node_id, given - required - optional)
        assert node["_meta"]["title"] == (info["display_name"] or node["class_type"])
        for input_name, value in node["inputs"].items():
            spec = input_spec(object_info_full, node["class_type"], input_name)
            if isinstance(value, list):
                src = wf[value[0]]
                out_type = object_info_full[src["class_type"]]["output"][value[1]]
                assert out_type == spec[0], (node_id, input_name, out_type, spec[0])
                continue
            opts = choices(spec)
            if opts is not None:
                if (node["class_type"], input_name) not in SERVER_FILE_INPUTS:
                    assert value in opts, (node_id, input_name, value)
                continue
            kind = spec[0]
            cfg = spec[1] if len(spec) > 1 else {}
            if kind == "INT":
                assert isinstance(value, int) and not isinstance(value, bool)
            elif kind == "FLOAT":
                assert isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind == "STRING":
                assert isinstance(value, str)
            if kind in ("INT", "FLOAT"):
                assert cfg.get("min", value) <= value <= cfg.get("max", value), (node_id, input_name)


@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_builtin_params_fit_the_inputs_they_set(builtin, object_info_full, name):
    """Param types match the widget types; enums are real choices; bounds lie within the
    widget's min/max, so every value the gateway accepts is one ComfyUI accepts."""
    doc = builtin[name]
    for pname, spec in doc.params.items():
        for node_id, input_name in spec.binds():
            class_type = doc.workflow[node_id]["class_type"]
            ispec = input_spec(object_info_full, class_type, input_name)
            opts = choices(ispec)
            if spec.type == "image":
                assert (class_type, input_name) == ("LoadImage", "image")
                continue
            if opts is not None:
                assert spec.type == "string", pname
                if (class_type, input_name) not in SERVER_FILE_INPUTS:
                    assert spec.enum is not None, pname
                    assert set(spec.enum) <= set(opts), (pname, set(spec.enum) - set(opts))
                continue
            kind = ispec[0]
            cfg = ispec[1] if len(ispec) > 1 else {}
            expected = {"INT": "integer", "FLOAT": "number", "STRING": "string", "BOOLEAN": "boolean"}[kind]
            assert spec.type == expected, (pname, spec.type, kind)
            if kind in ("INT", "FLOAT"):
                assert spec.minimum is not None and spec.maximum is not None, pname
                assert cfg["min"] <= spec.minimum <= spec.maximum <= cfg["max"], pname


@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_builtin_schema_and_defaults(builtin, name):
    doc = builtin[name]
    schema = params_schema(doc)
    jsonschema.Draft202012Validator.check_schema(schema)
    given = {"prompt": "a lighthouse at dusk", "image": "upload:0123"}
    given = {k: v for k, v in given.items() if k in doc.params}
    resolved = resolve_params(doc, given, rng=random.Random(5))
    jsonschema.validate(resolved, schema)
    wf = render(doc, resolved)
    for pname, value in resolved.items():
        for node_id, input_name in doc.params[pname].binds():
            assert wf[node_id]["inputs"][input_name] == value
    assert output_nodes(doc) == doc.outputs


def test_txt2img(builtin, object_info_full):
    doc = builtin["txt2img"]
    classes = {k: v["class_type"] for k, v in doc.workflow.items()}
    assert classes == {
        "3": "KSampler",
        "4": "CheckpointLoaderSimple",
        "5": "EmptyLatentImage",
        "6": "CLIPTextEncode",
        "7": "CLIPTextEncode",
        "8": "VAEDecode",
        "9": "SaveImage",
    }
    assert doc.workflow["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    # the links of ComfyUI's default graph
    k = doc.workflow["3"]["inputs"]
    assert (k["model"], k["positive"], k["negative"], k["latent_image"]) == (
        ["4", 0],
        ["6", 0],
        ["7", 0],
        ["5", 0],
    )
    assert doc.workflow["6"]["inputs"]["clip"] == ["4", 1] == doc.workflow["7"]["inputs"]["clip"]
    assert doc.workflow["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert doc.workflow["9"]["inputs"]["images"] == ["8", 0]
    p = doc.params
    assert list(p) == [
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "batch_size",
        "steps",
        "cfg",
        "seed",
        "sampler",
        "scheduler",
        "checkpoint",
    ]
    assert (p["batch_size"].default, p["batch_size"].bind) == (1, ["5.inputs.batch_size"])
    # Served as an OpenAI images model: n is the batch size.
    assert doc.openai is not None and (doc.openai.prompt, doc.openai.size, doc.openai.n) == (
        "prompt",
        ("width", "height"),
        "batch_size",
    )
    assert p["prompt"].required and p["prompt"].maxLength == 2000 and p["prompt"].bind == ["6.inputs.text"]
    assert p["negative_prompt"].default == "" and p["negative_prompt"].bind == ["7.inputs.text"]
    for dim in ("width", "height"):
        assert (p[dim].minimum, p[dim].maximum, p[dim].multipleOf, p[dim].default) == (64, 2048, 8, 512)
        assert p[dim].bind == [f"5.inputs.{dim}"]
    assert (p["steps"].minimum, p["steps"].maximum, p["steps"].default) == (1, 100, 20)
    assert (p["cfg"].type, p["cfg"].minimum, p["cfg"].maximum, p["cfg"].default) == ("number", 1, 30, 7)
    assert p["seed"].random_default and p["seed"].bind == ["3.inputs.seed"]
    assert p["sampler"].default == "euler" and p["sampler"].bind == ["3.inputs.sampler_name"]
    assert p["scheduler"].default == "normal" and p["scheduler"].bind == ["3.inputs.scheduler"]
    assert p["checkpoint"].default == "v1-5-pruned-emaonly.safetensors" and p["checkpoint"].bind == [
        "4.inputs.ckpt_name"
    ]
    assert doc.outputs == ["9"]
    assert output_nodes(doc, object_info_full) == ["9"]


def test_img2img(builtin):
    doc = builtin["img2img"]
    wf = doc.workflow
    assert wf["10"]["class_type"] == "LoadImage"
    assert wf["11"]["class_type"] == "VAEEncode"
    assert wf["11"]["inputs"] == {"pixels": ["10", 0], "vae": ["4", 2]}
    assert wf["3"]["inputs"]["latent_image"] == ["11", 0]
    assert "5" not in wf  # no empty latent: the image gives the size
    img = doc.params["image"]
    assert (img.type, img.required, img.bind) == ("image", True, ["10.inputs.image"])
    den = doc.params["denoise"]
    assert (den.type, den.minimum, den.maximum, den.default, den.bind) == (
        "number",
        0,
        1,
        0.75,
        ["3.inputs.denoise"],
    )
    assert set(doc.params) == {
        "image",
        "prompt",
        "negative_prompt",
        "denoise",
        "steps",
        "cfg",
        "seed",
        "sampler",
        "scheduler",
        "checkpoint",
    }
    assert doc.outputs == ["9"]
    # Served as an OpenAI images model for edits.
    assert doc.openai is not None and (doc.openai.prompt, doc.openai.image) == ("prompt", "image")


def test_blur_renders_the_recorded_blur_prompt(builtin):
    """With the recorded scenario's values, blur renders the graph ComfyUI ran (bar the prefix)."""
    doc = builtin["blur"]
    posted = next(
        h["request_json"]["prompt"]
        for h in recording("scenario_basic_blur.json")["http"]
        if h.get("method") == "POST" and h.get("path") == "/prompt"
    )
    resolved = resolve_params(
        doc, {"width": 64, "height": 64, "color": 16744448, "blur_radius": 3, "sigma": 1.0}
    )
    wf = render(doc, resolved)

    def strip(g):
        return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in g.items()}

    expected = json.loads(json.dumps(posted))
    expected["3"]["inputs"]["filename_prefix"] = "gateway_blur"
    assert strip(wf) == expected
    p = doc.params
    assert (p["width"].minimum, p["width"].maximum, p["width"].default) == (1, 4096, 512)
    assert (p["color"].minimum, p["color"].maximum) == (0, 16777215)
    assert (p["blur_radius"].minimum, p["blur_radius"].maximum, p["blur_radius"].default) == (1, 31, 3)
    assert (p["sigma"].minimum, p["sigma"].maximum, p["sigma"].default) == (0.1, 10, 1.0)
    assert "filename_prefix" not in {i for s in p.values() for _, i in s.binds()}


def test_resize_matches_the_recorded_scale_invert_chain(builtin, object_info_full):
    doc = builtin["resize"]
    chain = [doc.workflow[k]["class_type"] for k in ("1", "2", "3", "4")]
    assert chain == ["EmptyImage", "ImageScale", "ImageInvert", "SaveImage"]
    recorded = recording("scenario_upload_loadimage.json")
    posted = next(
        h["request_json"]["prompt"]
        for h in recorded["http"]
        if h.get("method") == "POST" and h.get("path") == "/prompt"
    )
    # same ImageScale / ImageInvert inputs as the recorded LoadImage → ImageScale → ImageInvert run
    assert set(doc.workflow["2"]["inputs"]) == set(posted["2"]["inputs"])
    assert set(doc.workflow["3"]["inputs"]) == set(posted["3"]["inputs"])
    assert (
        doc.params["upscale_method"].enum == input_spec(object_info_full, "ImageScale", "upscale_method")[0]
    )
    assert doc.params["crop"].enum == input_spec(object_info_full, "ImageScale", "crop")[0]


# ---- loader ------------------------------------------------------------------------------------


def test_builtin_files_are_package_data():
    files = sorted(p.name for p in (PACKAGE_DIR / "builtin").glob("*.json"))
    assert files == sorted(f"{n}.json" for n in BUILTIN_NAMES)
    pyproject = (PACKAGE_DIR.parents[1] / "pyproject.toml").read_text()
    assert '"app.templates" = ["builtin/*.json"]' in pyproject


def test_load_builtin_returns_fresh_equal_documents():
    a, b = load_builtin(), load_builtin()
    assert a == b and a is not b


def test_load_directory_ok_and_ignores_other_files(tmp_path):
    src = (PACKAGE_DIR / "builtin" / "blur.json").read_text()
    (tmp_path / "my-blur.v2.json").write_text(src)
    (tmp_path / "README.md").write_text("not a template")
    assert list(load_directory(tmp_path)) == ["my-blur.v2"]


def test_broken_template_file_raises_naming_it(tmp_path):
    raw = json.loads((PACKAGE_DIR / "builtin" / "blur.json").read_text())
    raw["params"]["width"]["bind"] = ["1.inputs.widht"]
    (tmp_path / "blur.json").write_text(json.dumps(raw))
    with pytest.raises(TemplateInvalid) as ei:
        load_directory(tmp_path)
    assert ei.value.template == "blur"
    assert ei.value.errors[0]["field"] == "params.width.bind[0]"
    assert "'blur'" in str(ei.value) and "widht" in str(ei.value)


def test_bad_file_name_raises(tmp_path):
    (tmp_path / "Bad Name.json").write_text((PACKAGE_DIR / "builtin" / "blur.json").read_text())
    with pytest.raises(TemplateInvalid) as ei:
        load_directory(tmp_path)
    assert ei.value.errors[0]["field"] == "name"


def test_invalid_json_and_duplicate_keys_raise():
    with pytest.raises(TemplateInvalid, match="not valid JSON"):
        parse_template_json("{", name="x")
    with pytest.raises(TemplateInvalid, match="duplicate key 'workflow'"):
        parse_template_json('{"workflow": {}, "workflow": {}}', name="x")


# ---- purity ------------------------------------------------------------------------------------


def test_package_imports_only_stdlib_pydantic_and_itself():
    allowed_third_party = {"pydantic"}
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: within app.templates
                    continue
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in sys.stdlib_module_names or root in allowed_third_party, (path.name, root)
