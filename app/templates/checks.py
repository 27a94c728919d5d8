"""Checks of a template against its own workflow graph and, optionally, a server's /object_info.

``check_template(doc)`` checks the graph structure, the binds and the outputs. With
``object_info`` (the body of ComfyUI's ``GET /object_info``) it also checks the node classes, the
inputs they declare, and which nodes are output nodes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ._values import json_type_name
from .document import TemplateDocument, parse_bind, parse_template
from .errors import TemplateInvalid

#: Input types that ComfyUI shows as widgets (values), not sockets (links).
_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


def is_link(value: Any) -> bool:
    """Whether a node input value is a link. ComfyUI reads every list in ``inputs`` as a link."""
    return isinstance(value, list)


def _is_valid_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and value[1] >= 0
    )


def _class_info(object_info: Mapping[str, Any] | None, class_type: Any) -> Mapping[str, Any] | None:
    if object_info is None or not isinstance(class_type, str):
        return None
    info = object_info.get(class_type)
    return info if isinstance(info, Mapping) else None


def declared_inputs(class_info: Mapping[str, Any]) -> dict[str, Any]:
    """The required and optional inputs a class declares in /object_info (hidden ones excluded)."""
    out: dict[str, Any] = {}
    inputs = class_info.get("input")
    if not isinstance(inputs, Mapping):
        return out
    for section in ("required", "optional"):
        part = inputs.get(section)
        if isinstance(part, Mapping):
            out.update(part)
    return out


def is_output_class(class_info: Mapping[str, Any]) -> bool:
    return class_info.get("output_node") is True


def _link_types(object_info: Mapping[str, Any]) -> set[str]:
    """Every type some class outputs: an input of such a type (not a widget type) is a socket."""
    types: set[str] = set()
    for info in object_info.values():
        if isinstance(info, Mapping):
            for out in info.get("output") or ():
                if isinstance(out, str):
                    types.add(out)
    return types - _WIDGET_TYPES


def _declared_as_link(spec: Any, link_types: set[str]) -> str | None:
    """The socket type of an input spec that only takes links, or None if it takes a value."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if not isinstance(t, str):  # a list of choices: a combo widget
        return None
    if opts.get("forceInput") is True:
        return t
    parts = [p.strip() for p in t.split(",") if p.strip()]
    if parts and all(p in link_types for p in parts):
        return t
    return None


def check_template(
    doc: TemplateDocument | Mapping[str, Any], object_info: Mapping[str, Any] | None = None
) -> None:
    """Raise :class:`TemplateInvalid` listing every problem of ``doc`` against its graph.

    ``doc`` may be a :class:`TemplateDocument` or a raw document (then it is parsed first, and
    parse errors are raised as they are). The checks:

    - every workflow node is an object with a non-empty string ``class_type`` and an object
      ``inputs``; every link (a list value) is ``[node id, output index]`` naming an existing node;
    - every bind names an existing node, and an input that node has: present in its ``inputs``, or,
      with ``object_info``, declared (required or optional) by its class; a bind may not replace
      a link (that would cut the graph) nor set an input that the class declares as a socket;
    - every id in ``outputs`` is a workflow node;
    - with ``object_info``: every ``class_type`` is known to the server, every id in ``outputs`` is
      an output node (``output_node: true``), and the workflow has at least one output node.
    """
    if not isinstance(doc, TemplateDocument):
        doc = parse_template(dict(doc))
    link_types = _link_types(object_info) if object_info is not None else set()
    problems = [
        *_graph_problems(doc.workflow, object_info),
        *_bind_problems(doc, object_info, link_types),
        *_output_problems(doc, object_info),
    ]
    if problems:
        raise TemplateInvalid([{"field": field, "message": message} for field, message in problems])


#: One problem found by a check: the field it is about, and what is wrong.
_Problem = tuple[str, str]


def _graph_problems(workflow: Mapping[str, Any], object_info: Mapping[str, Any] | None) -> Iterator[_Problem]:
    """Every node is an object with a known ``class_type`` and an ``inputs`` object whose links hold."""
    for node_id, node in workflow.items():
        where = f"workflow.{node_id}"
        if not isinstance(node, Mapping):
            yield (
                where,
                f"a node must be an object with 'class_type' and 'inputs', got {json_type_name(node)}",
            )
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            yield f"{where}.class_type", "every node needs a non-empty string 'class_type'"
        elif object_info is not None and _class_info(object_info, class_type) is None:
            yield f"{where}.class_type", f"unknown node class {class_type!r}: the server does not have it"
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            yield f"{where}.inputs", "every node needs an 'inputs' object"
            continue
        checks_outputs = _class_info(object_info, class_type) is not None
        for input_name, value in inputs.items():
            if is_link(value):
                problem = _link_problem(workflow, object_info, value, checks_outputs)
                if problem is not None:
                    yield f"{where}.inputs.{input_name}", problem


def _link_problem(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any] | None, value: Any, checks_outputs: bool
) -> str | None:
    """What is wrong with the link ``value``; its output index is checked only when ``checks_outputs``."""
    if not _is_valid_link(value):
        return f"a link must be [node id, output index], got {value!r}"
    if value[0] not in workflow:
        return f"links to node {value[0]!r}, which is not in the workflow"
    if not checks_outputs:
        return None
    src = workflow[value[0]]
    src_info = _class_info(object_info, src.get("class_type")) if isinstance(src, Mapping) else None
    outs = src_info.get("output") if src_info is not None else None
    if isinstance(outs, list) and value[1] >= len(outs):
        return f"links to output {value[1]} of node {value[0]!r}, which has {len(outs)} output(s)"
    return None


def _bind_problems(
    doc: TemplateDocument, object_info: Mapping[str, Any] | None, link_types: set[str]
) -> Iterator[_Problem]:
    """Every bind names an input its node has, that holds a value (not a link or a socket)."""
    for pname, spec in doc.params.items():
        for i, bind in enumerate(spec.bind):
            problem = _bind_problem(doc.workflow, object_info, link_types, bind)
            if problem is not None:
                yield f"params.{pname}.bind[{i}]", problem


def _bind_problem(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any] | None, link_types: set[str], bind: str
) -> str | None:
    node_id, input_name = parse_bind(bind)
    node = workflow.get(node_id)
    if node is None:
        return f"{bind!r}: node {node_id!r} is not in the workflow"
    if not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
        return f"{bind!r}: node {node_id!r} is malformed (see workflow.{node_id})"
    inputs = node["inputs"]
    class_type = node.get("class_type")
    if input_name in inputs:
        if is_link(inputs[input_name]):
            return (
                f"{bind!r}: input {input_name!r} of node {node_id!r} holds a link "
                f"{inputs[input_name]!r}; a param cannot replace a link (it would cut the "
                "graph). Bind the input of the node the link comes from instead"
            )
        return None
    cinfo = _class_info(object_info, class_type)
    declared = declared_inputs(cinfo) if cinfo is not None else {}
    if input_name in declared:
        socket = _declared_as_link(declared[input_name], link_types)
        if socket is not None:
            return (
                f"{bind!r}: input {input_name!r} of {class_type} takes a link of type {socket}, not a value"
            )
        return None
    known = sorted(set(inputs) | set(declared))
    return f"{bind!r}: node {node_id!r} ({class_type}) has no input {input_name!r}" + (
        f"; its inputs are: {', '.join(known)}" if known else ""
    )


def _output_problems(doc: TemplateDocument, object_info: Mapping[str, Any] | None) -> Iterator[_Problem]:
    """Every listed output is a workflow node (an output node, with ``object_info``), and one exists."""
    workflow = doc.workflow
    for i, node_id in enumerate(doc.outputs or ()):
        node = workflow.get(node_id)
        if node is None:
            yield f"outputs[{i}]", f"node {node_id!r} is not in the workflow"
            continue
        if object_info is not None and isinstance(node, Mapping):
            cinfo = _class_info(object_info, node.get("class_type"))
            if cinfo is not None and not is_output_class(cinfo):
                yield (
                    f"outputs[{i}]",
                    f"node {node_id!r} ({node.get('class_type')}) is not an output node, so it "
                    "has no files to return",
                )
    if object_info is not None and not any(
        isinstance(node, Mapping)
        and (cinfo := _class_info(object_info, node.get("class_type"))) is not None
        and is_output_class(cinfo)
        for node in workflow.values()
    ):
        yield (
            "workflow",
            "the workflow has no output node (such as SaveImage); ComfyUI refuses a prompt without one",
        )
