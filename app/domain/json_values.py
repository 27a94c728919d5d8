"""What a JSON value from a client may hold, and how a stored one is made safe to send.

Python's json module accepts things that break the gateway later: lone surrogates (`"\\ud800"`)
cannot be encoded to UTF-8 (the database driver, ComfyUI's HTTP body and every response fail on
them), NaN and Infinity are not JSON (a client's parser refuses them), NUL cannot reach ComfyUI or
a PostgreSQL text column, integers beyond 64 bits fit no ComfyUI input, and deep nesting exhausts
recursion in whatever walks the value next (the serializer stops at 255 levels). `problem` finds
the first such thing in a request's value; `sanitized` repairs a value read back from storage
(written before requests were checked) so that a view of it never fails.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: How deeply objects and arrays may nest inside one request field (params, metadata, a workflow).
#: ComfyUI's API format needs about 4 levels; 32 leaves room for any real metadata.
MAX_DEPTH = 32
#: Deeper stored content is cut when viewed: the response serializer gives up at 255 levels.
MAX_VIEW_DEPTH = 128

# Signed or unsigned 64-bit: ComfyUI's seeds go up to 2**64 - 1.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

_SURROGATE = re.compile("[\ud800-\udfff]")

Path = list[str | int]


def _text_problem(text: str, allow_nul: bool) -> str | None:
    if not text.isascii() and _SURROGATE.search(text):
        return "contains a lone UTF-16 surrogate (not valid Unicode text)"
    if not allow_nul and "\x00" in text:
        return "contains a NUL character"
    return None


def problem(value: Any, *, allow_nul: bool = False, max_depth: int = MAX_DEPTH) -> tuple[Path, str] | None:
    """The path (inside `value`) and description of the first thing in `value` the gateway cannot
    store or pass on; None when there is none. Walks without recursion, and no deeper than `max_depth`."""
    stack: list[tuple[Any, Path, int]] = [(value, [], 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            reason = _text_problem(item, allow_nul)
            if reason:
                return path, reason
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return path, "is an integer that does not fit in 64 bits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, "is not a finite number (NaN and Infinity are not JSON)"
        elif isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return path, f"nests objects and arrays more than {max_depth} levels deep"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and (reason := _text_problem(key, allow_nul)):
                        return path, f"has a key that {reason}"
                    stack.append((child, [*path, key], depth + 1))
            else:
                stack.extend((child, [*path, i], depth + 1) for i, child in enumerate(item))
    return None


def _safe_text(text: str) -> str:
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def sanitized(value: Any, *, max_depth: int = MAX_VIEW_DEPTH) -> Any:
    """`value` as strict JSON can carry it: lone surrogates become U+FFFD, NaN and Infinity null,
    and objects or arrays nested deeper than `max_depth` null. Values already fine are returned as they are."""
    if problem(value, allow_nul=True, max_depth=max_depth) is None:
        return value
    return _repaired(value, max_depth)


def _repaired(value: Any, depth_left: int) -> Any:
    # Recursion is bounded by `depth_left` (at most MAX_VIEW_DEPTH levels).
    if isinstance(value, str):
        return _safe_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list | tuple):
        if depth_left <= 0:
            return None
        if isinstance(value, dict):
            return {_safe_text(str(k)): _repaired(v, depth_left - 1) for k, v in value.items()}
        return [_repaired(v, depth_left - 1) for v in value]
    return value
