"""Batch bodies read as streams, with a cap on lines: JSON (`{"lines": [...], ...}`), CSV and JSONL.

Parsing a whole body at once costs memory in proportion to what it holds, not to what the farm allows: a 20 MiB
`[{},{},...]` is seven million dicts. Here the body is read a chunk at a time and each line is parsed as it
arrives, so a batch with more than `max_lines` lines is refused (413 `batch_too_large`) as soon as line
`max_lines + 1` is read, and what is held is at most the allowed lines plus one chunk. A single line (a JSON array
element, a JSONL or CSV line) longer than `max_line_chars` is refused the same way, before it is parsed; JSON nested
deeper than shared/jsonbody.py's `MAX_DEPTH` is not JSON the farm reads. CSV and JSONL problems are reported as
every line problem is (shared/batches/lines.py `problem`: `{line, id, field, code, message}`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from typing import IO, Any

from shared import jsonbody
from shared.batches.lines import LINE_FIELDS, problem
from shared.errors import BadRequest, PayloadTooLarge

CHUNK_BYTES = 64 * 1024
# A top-level key of a JSON batch, and each value but `lines` (defaults, name, webhook_url).
MAX_KEY_CHARS = 1024
MAX_FIELD_CHARS = 64 * 1024
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_MISSING = object()
Problems = list[dict[str, Any]]


def too_many_lines(max_lines: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the batch has more than {max_lines} lines; the limit is max_batch_lines={max_lines}", code="batch_too_large"
    )


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_json")


class _JsonText:
    """UTF-8 JSON text read from a binary stream a chunk at a time; what was consumed is dropped as it goes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf, self.pos, self.eof = "", 0, False
        self.dropped = 0  # characters consumed and dropped from `buf`: positions in messages count from the body

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self._stream.read(CHUNK_BYTES)
        try:
            text = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise _invalid(f"the body is not UTF-8: {exc.reason}") from None
        self.eof = not data
        self.dropped += self.pos
        self.buf, self.pos = self.buf[self.pos :] + text, 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos : self.pos + 1]

    def at(self, offset: int = 0) -> int:
        """The position (in characters of the body) of `pos + offset`."""
        return self.dropped + self.pos + offset

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise _invalid(f"expected {what} at character {self.at()}")
        self.pos += 1

    def value(self, max_chars: int, too_long: Exception, depth: int) -> Any:
        """The next JSON value, read until it is complete; `too_long` when its text runs past `max_chars`."""
        self.peek()
        while True:
            found: Any = _MISSING
            try:
                found, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise _invalid(f"not JSON: {exc.msg} at character {self.dropped + exc.pos}") from None
            except RecursionError:
                raise _invalid(f"nested deeper than {jsonbody.MAX_DEPTH} levels") from None
            # A value that ends where the text read so far ends may go on (a number, `tru`...): read on to be sure.
            if found is not _MISSING and (end < len(self.buf) or self.eof):
                if end - self.pos > max_chars:
                    raise too_long
                if jsonbody.depth(found) > depth:
                    raise _invalid(f"nested deeper than {jsonbody.MAX_DEPTH} levels")
                self.pos = end
                return found
            if len(self.buf) - self.pos > max_chars:
                raise too_long
            self._more()


def read_json(stream: IO[bytes], max_lines: int, max_line_chars: int) -> tuple[list[Any], dict[str, Any]]:
    """A JSON batch: (its `lines`, every other top-level field as sent). Refuses a body that is not an object
    with a `lines` array (400 `invalid_json`), more than `max_lines` lines or a line over `max_line_chars`
    characters (413 `batch_too_large`), another field over MAX_FIELD_CHARS (413 `body_too_large`)."""
    text = _JsonText(stream)
    shape = 'the body must be a JSON object with a "lines" array'
    if text.peek() != "{":
        raise _invalid(shape)
    text.pos += 1
    rows: list[Any] | None = None
    fields: dict[str, Any] = {}
    key_too_long = PayloadTooLarge(f"a key of the body is over {MAX_KEY_CHARS} characters", code="body_too_large")
    field_too_long = PayloadTooLarge(
        f"a field of the body other than lines is over {MAX_FIELD_CHARS} characters", code="body_too_large"
    )
    line_too_long = PayloadTooLarge(
        f"a line of the batch is over {max_line_chars} characters of JSON", code="batch_too_large"
    )
    if text.peek() == "}":
        text.pos += 1
    else:
        while True:
            if text.peek() != '"':
                raise _invalid(f"expected a key at character {text.at()}")
            key = text.value(MAX_KEY_CHARS, key_too_long, 0)
            text.expect(":", "':'")
            if key == "lines" and text.peek() == "[":
                rows = _json_lines(text, max_lines, max_line_chars, line_too_long)
            else:
                fields[key] = text.value(MAX_FIELD_CHARS, field_too_long, jsonbody.MAX_DEPTH - 1)
                if key == "lines":
                    raise _invalid(shape)
            following = text.peek()
            text.pos += 1
            if following == "}":
                break
            if following != ",":
                raise _invalid(f"expected ',' or '}}' at character {text.at(-1)}")
    if text.peek() != "":
        raise _invalid(f"unexpected text after the object at character {text.at()}")
    if rows is None:
        raise _invalid(shape)
    return rows, fields


def _json_lines(text: _JsonText, max_lines: int, max_line_chars: int, too_long: Exception) -> list[Any]:
    text.expect("[", "'['")
    rows: list[Any] = []
    if text.peek() == "]":
        text.pos += 1
        return rows
    while True:
        rows.append(text.value(max_line_chars, too_long, jsonbody.MAX_DEPTH - 2))
        if len(rows) > max_lines:
            raise too_many_lines(max_lines)
        following = text.peek()
        text.pos += 1
        if following == "]":
            return rows
        if following != ",":
            raise _invalid(f"expected ',' or ']' at character {text.at(-1)}")


def _raw_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[bytes | None]:
    """The stream's lines split at b"\\n", read a chunk at a time; None for a line over `max_line_bytes` (its
    bytes are skipped, never held)."""
    pending = bytearray()
    skipping = False
    while True:
        data = stream.read(CHUNK_BYTES)
        if not data:
            break
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if not skipping:
                pending += data[start:end]
                yield bytes(pending) if len(pending) <= max_line_bytes else None
            skipping = False
            pending.clear()
            start = end + 1
        if not skipping:
            pending += data[start:]
            if len(pending) > max_line_bytes:
                yield None
                skipping = True
                pending.clear()
    if pending and not skipping:
        yield bytes(pending)


def read_jsonl(stream: IO[bytes], max_lines: int, max_line_chars: int) -> tuple[list[dict[str, Any]], Problems]:
    """One JSON object per non-empty line (UTF-8, a BOM allowed), refused past `max_lines` lines."""
    rows: list[dict[str, Any]] = []
    problems: Problems = []
    number = 0
    for raw in _raw_lines(stream, max_line_chars * 4):
        if raw is not None:
            if number == 0 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return [], [problem(0, None, "file", "invalid_encoding", f"the file is not UTF-8: {exc.reason}")]
            if not line.strip():
                continue
        number += 1
        if number > max_lines:
            raise too_many_lines(max_lines)
        if raw is None or len(line) > max_line_chars:
            problems.append(problem(number, None, "line", "line_too_long", f"over {max_line_chars} characters"))
            continue
        try:
            value = jsonbody.loads(line)
        except ValueError as exc:
            problems.append(problem(number, None, "line", "invalid_json", f"not JSON: {exc}"))
            continue
        if not isinstance(value, dict):
            problems.append(problem(number, None, "line", "invalid_json", "each line must be a JSON object"))
            continue
        rows.append(value)
    return rows, problems


def read_csv(stream: IO[bytes], max_lines: int, max_line_chars: int) -> tuple[list[dict[str, Any]], Problems]:
    """Rows of a CSV with a header row (UTF-8, a BOM allowed; empty cells count as absent), refused past
    `max_lines` rows; a physical line over `max_line_chars` characters makes the file unreadable (`line_too_long`)."""
    buffered: IO[bytes] = io.BufferedReader(stream) if isinstance(stream, io.RawIOBase) else stream
    wrapper = io.TextIOWrapper(buffered, encoding="utf-8-sig", newline="")
    long_line = problem(0, None, "file", "line_too_long", f"a line is over {max_line_chars} characters")

    def lines() -> Iterator[str]:
        while line := wrapper.readline(max_line_chars + 1):
            if len(line) > max_line_chars:
                raise _LineTooLong
            yield line

    reader = csv.DictReader(lines())
    try:
        header = reader.fieldnames or []
        unknown = [name for name in header if name not in ("id", *LINE_FIELDS)]
        if unknown or "text" not in header:
            problems = [problem(0, None, name, "unknown_column", f"unknown column {name!r}") for name in unknown]
            if "text" not in header:
                problems.append(problem(0, None, "text", "missing_column", "the header has no 'text' column"))
            return [], problems
        rows: list[dict[str, Any]] = []
        for row in reader:
            if len(rows) >= max_lines:
                raise too_many_lines(max_lines)
            if None in row:
                rows.append({"__error__": "the row has more cells than the header"})
                continue
            rows.append({k: v for k, v in row.items() if v not in (None, "")})
        return rows, []
    except UnicodeDecodeError as exc:
        return [], [problem(0, None, "file", "invalid_encoding", f"the file is not UTF-8: {exc.reason}")]
    except csv.Error as exc:
        return [], [problem(reader.line_num, None, "file", "invalid_csv", str(exc))]
    except _LineTooLong:
        return [], [long_line]
    finally:
        wrapper.detach()  # the request's stream is not the wrapper's to close


class _LineTooLong(Exception):
    pass
