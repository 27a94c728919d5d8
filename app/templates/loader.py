"""Loading template documents from JSON files, and the built-in templates shipped as package data."""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .checks import check_template
from .document import TemplateDocument, parse_template, validate_name
from .errors import TemplateInvalid

BUILTIN_PACKAGE = "app.templates"
BUILTIN_DIR = "builtin"


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_template_json(text: str | bytes, name: str | None = None) -> TemplateDocument:
    """Parse a JSON template document, validate it and check it against its own workflow
    (no /object_info). Raises :class:`TemplateInvalid` (with ``.template = name``); JSON syntax
    errors and duplicate keys are reported as a problem of the field ``""``."""
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise TemplateInvalid([{"field": "", "message": f"not valid JSON: {exc}"}], template=name) from None
    try:
        doc = parse_template(data)
        check_template(doc)
    except TemplateInvalid as exc:
        raise TemplateInvalid(exc.errors, template=name) from None
    return doc


def load_directory(directory: Traversable | Path | str) -> dict[str, TemplateDocument]:
    """Load every ``*.json`` file of ``directory`` as a template named after the file's stem.

    All files are validated; the first broken one raises :class:`TemplateInvalid` naming it.
    """
    root: Traversable = Path(directory) if isinstance(directory, str) else directory
    templates: dict[str, TemplateDocument] = {}
    entries = sorted(
        (e for e in root.iterdir() if e.is_file() and e.name.endswith(".json")), key=lambda e: e.name
    )
    for entry in entries:
        name = entry.name[: -len(".json")]
        try:
            validate_name(name)
        except TemplateInvalid as exc:
            raise TemplateInvalid(exc.errors, template=name) from None
        templates[name] = parse_template_json(entry.read_bytes(), name=name)
    return templates


def load_builtin() -> dict[str, TemplateDocument]:
    """The built-in templates (``app/templates/builtin/*.json``), by name, validated and checked
    against their own workflows. A broken built-in raises :class:`TemplateInvalid`."""
    return load_directory(resources.files(BUILTIN_PACKAGE).joinpath(BUILTIN_DIR))
