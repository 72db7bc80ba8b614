"""JSON from untrusted bodies: nesting is measured before the parser recurses into it.

Python's json parser recurses once per level of nesting, so `[[[[...` a few thousand levels deep raises
RecursionError (a 500) instead of a parse error. `nesting_ok` measures the depth first, at the speed of the regex
engine and `bytes.translate`: strings are removed, everything but brackets is dropped, and the innermost `[]` and `{}`
pairs are peeled off one level per pass. A body still holding brackets after `MAX_DEPTH` passes is nested deeper
than that, or its brackets do not balance; either way it is not JSON the farm accepts.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_PAIR = re.compile(rb"\[\]|\{\}")


def nesting_ok(data: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text's arrays and objects nest at most `limit` deep and balance."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    skeleton = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not skeleton:
            return True
        peeled = _PAIR.sub(b"", skeleton)
        if len(peeled) == len(skeleton):
            return False  # brackets that do not pair up: not JSON
        skeleton = peeled
    return not skeleton


class TooDeep(ValueError):
    """Nested deeper than the limit (or brackets that do not pair up): a ValueError like any malformed JSON."""


def loads(data: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """`json.loads`, refusing (`TooDeep`, a ValueError as for any malformed JSON) a text nested deeper than
    `limit`."""
    if not nesting_ok(data, limit):
        raise TooDeep(f"nested deeper than {limit} levels, or brackets that do not pair up")
    try:
        return json.loads(data)
    except RecursionError:  # not reached after the check; kept so no body can ever become a 500
        raise TooDeep(f"nested deeper than {limit} levels") from None


def depth(value: Any) -> int:
    """How deep a parsed value nests (a scalar is 0, `[]` and `{}` are 1), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest
