"""Exceptions raised by the template library.

Both carry a list of machine-readable problems in ``.errors``; neither knows anything about HTTP.
"""

from __future__ import annotations

from typing import Any


class TemplateInvalid(Exception):
    """A template document (or a template name) is not acceptable.

    ``errors`` is a list of ``{"field": str, "message": str}``, where ``field`` is a path into the
    document such as ``"params.width.bind[0]"``, ``"workflow.3.class_type"`` or ``"outputs[1]"``.
    ``template`` is the template's name when it is known (for example, for a built-in template).
    """

    def __init__(self, errors: list[dict[str, Any]], template: str | None = None) -> None:
        self.errors: list[dict[str, Any]] = list(errors)
        self.template = template
        super().__init__(self._summary())

    def _summary(self) -> str:
        head = f"template {self.template!r} is invalid" if self.template else "template is invalid"
        body = "; ".join(f"{e.get('field') or '<document>'}: {e.get('message')}" for e in self.errors)
        return f"{head}: {body}" if body else head


class ParamsInvalid(Exception):
    """The params of a job do not satisfy the template's parameter schema.

    ``errors`` lists every problem found, each ``{"param": name, "message": str}``. ``param`` is
    ``None`` only when the params as a whole are unusable (they are not a JSON object).
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors: list[dict[str, Any]] = list(errors)
        super().__init__(
            "invalid params: "
            + "; ".join(
                (f"{e['param']}: {e['message']}" if e.get("param") is not None else str(e["message"]))
                for e in self.errors
            )
        )
