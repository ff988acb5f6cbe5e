"""Go's encoding/json and encoding/base64 as etcd's HTTP APIs show them to clients.

etcd's HTTP endpoints decode request bodies with Go's json package and answer malformed
input with Go's error texts ("invalid character 'b' looking for beginning of object key
string", "unexpected EOF", "illegal base64 data at input byte 4", ...). Python's json
module does the actual parsing (fast, in C); only when it refuses the input does the small
Go-scanner replica here run, to find the message Go would give. Responses are written the
way Go's encoder writes strings (<, >, & and U+2028/9 escaped).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

__all__ = [
    "GoJSONError",
    "GoNumber",
    "b64decode",
    "decode_one",
    "decode_whole",
    "dumps",
    "kind_of",
]


class GoJSONError(ValueError):
    """Input Go's decoder refuses; str(e) is Go's message."""


class GoNumber(float):
    """A JSON number with a fraction or exponent, keeping its literal for Go's messages."""

    __slots__ = ("literal",)

    def __new__(cls, literal: str) -> GoNumber:  # noqa: PYI034
        obj = super().__new__(cls, literal)
        obj.literal = literal
        return obj


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON to Go


_decoder = json.JSONDecoder(parse_float=GoNumber, parse_constant=_no_constants)
_WS = " \t\n\r"

_TOO_DEEP = "exceeded max depth"
_MAX_DEPTH = 10000  # Go's maxNestingDepth
EOF_STREAM = "unexpected EOF"  # json.Decoder on a truncated stream
EOF_WHOLE = "unexpected end of JSON input"  # json.Unmarshal on truncated input


def decode_one(text: str, pos: int = 0) -> tuple[Any, int]:
    """One JSON value from `text` at `pos`, as Go's json.Decoder.Decode reads it from a stream
    (what follows the value is not looked at). Returns (value, end position).

    Raises EOFError if only whitespace is left, GoJSONError with Go's message otherwise.
    """
    n = len(text)
    while pos < n and text[pos] in _WS:
        pos += 1
    if pos >= n:
        raise EOFError
    try:
        return _decoder.raw_decode(text, pos)
    except (ValueError, RecursionError):
        pass
    # Deeper than Python's recursion allows yet valid for Go: rare enough to refuse.
    msg = scan_error(text, pos, whole=False)
    raise GoJSONError(msg or _TOO_DEEP)


def decode_whole(text: str) -> Any:
    """`text` as exactly one JSON value, as Go's json.Unmarshal reads it."""
    try:
        value, end = _decoder.raw_decode(text.lstrip(_WS))
    except (ValueError, RecursionError):
        value, end = None, -1
    if end >= 0 and not text.lstrip(_WS)[end:].strip(_WS):
        return value
    raise GoJSONError(scan_error(text, 0, whole=True) or _TOO_DEEP)


def kind_of(value: Any) -> str:
    """Go's name for the JSON kind of a decoded value, as in its UnmarshalTypeError."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


# -- Go's scanner, for error messages only ---------------------------------------------------------


def quote_char(c: str) -> str:
    """Go's quoteChar: how a byte is shown in a syntax error."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    o = ord(c)
    special = {
        "\a": "\\a",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\v": "\\v",
        "\\": "\\\\",
    }
    if c in special:
        return "'" + special[c] + "'"
    if o < 0x20 or o == 0x7F:
        return f"'\\x{o:02x}'"
    if 0x80 <= o <= 0xA0 or o == 0xAD:
        return f"'\\u{o:04x}'"
    return "'" + c + "'"


_VALUE, _VALUE_OR_CLOSE, _KEY_OR_CLOSE, _KEY, _COLON, _AFTER, _DONE = range(7)


def scan_error(text: str, pos: int, whole: bool) -> str | None:
    """The error Go's scanner reports for the value starting at `pos`, or None if it is valid.

    The scan runs over the UTF-8 bytes (Go reports the offending byte, not the character).
    `whole`: json.Unmarshal semantics (trailing data is an error, EOF is "unexpected end of
    JSON input"); otherwise json.Decoder's ("unexpected EOF", trailing data ignored).
    """
    s = text[pos:].encode("utf-8", "surrogateescape").decode("latin-1")
    eof = EOF_WHOLE if whole else EOF_STREAM
    n = len(s)
    i = 0
    stack: list[str] = []
    expect = _VALUE
    while True:
        while i < n and s[i] in _WS:
            i += 1
        if i >= n:
            return None if expect == _DONE else eof
        c = s[i]
        if expect == _DONE:
            return f"invalid character {quote_char(c)} after top-level value"
        if expect == _VALUE or expect == _VALUE_OR_CLOSE:
            if expect == _VALUE_OR_CLOSE and c == "]":
                stack.pop()
                i += 1
            elif (c == "{" or c == "[") and len(stack) >= _MAX_DEPTH:
                return f"invalid character {quote_char(c)} exceeded max depth"
            elif c == "{":
                stack.append("o")
                expect = _KEY_OR_CLOSE
                i += 1
                continue
            elif c == "[":
                stack.append("a")
                expect = _VALUE_OR_CLOSE
                i += 1
                continue
            elif c == '"':
                err, i = _scan_string(s, i, eof)
                if err:
                    return err
            elif c == "-" or "0" <= c <= "9":
                err, i = _scan_number(s, i, eof)
                if err:
                    return err
            elif c in "tfn":
                err, i = _scan_literal(s, i, eof)
                if err:
                    return err
            else:
                return f"invalid character {quote_char(c)} looking for beginning of value"
        elif expect == _KEY_OR_CLOSE or expect == _KEY:
            if expect == _KEY_OR_CLOSE and c == "}":
                stack.pop()
                i += 1
            elif c == '"':
                err, i = _scan_string(s, i, eof)
                if err:
                    return err
                expect = _COLON
                continue
            else:
                return f"invalid character {quote_char(c)} looking for beginning of object key string"
        elif expect == _COLON:
            if c != ":":
                return f"invalid character {quote_char(c)} after object key"
            expect = _VALUE
            i += 1
            continue
        elif expect == _AFTER:
            top = stack[-1]
            if c == ",":
                expect = _KEY if top == "o" else _VALUE
                i += 1
                continue
            if (top == "o" and c == "}") or (top == "a" and c == "]"):
                stack.pop()
                i += 1
            elif top == "o":
                return f"invalid character {quote_char(c)} after object key:value pair"
            else:
                return f"invalid character {quote_char(c)} after array element"
        # a value (or container) just ended
        if stack:
            expect = _AFTER
        elif whole:
            expect = _DONE
        else:
            return None


def _scan_string(s: str, i: int, eof: str) -> tuple[str | None, int]:
    n = len(s)
    i += 1
    while i < n:
        c = s[i]
        if c == '"':
            return None, i + 1
        if c == "\\":
            i += 1
            if i >= n:
                return eof, i
            e = s[i]
            if e == "u":
                for _ in range(4):
                    i += 1
                    if i >= n:
                        return eof, i
                    if s[i] not in "0123456789abcdefABCDEF":
                        return f"invalid character {quote_char(s[i])} in \\u hexadecimal character escape", i
            elif e not in 'bfnrt\\/"':
                return f"invalid character {quote_char(e)} in string escape code", i
        elif ord(c) < 0x20:
            return f"invalid character {quote_char(c)} in string literal", i
        i += 1
    return eof, i


def _scan_number(s: str, i: int, eof: str) -> tuple[str | None, int]:
    n = len(s)
    if s[i] == "-":
        i += 1
        if i >= n:
            return eof, i
        if not ("0" <= s[i] <= "9"):
            return f"invalid character {quote_char(s[i])} in numeric literal", i
    if s[i] == "0":
        i += 1
    else:
        while i < n and "0" <= s[i] <= "9":
            i += 1
    if i < n and s[i] == ".":
        i += 1
        if i >= n:
            return eof, i
        if not ("0" <= s[i] <= "9"):
            return f"invalid character {quote_char(s[i])} after decimal point in numeric literal", i
        while i < n and "0" <= s[i] <= "9":
            i += 1
    if i < n and s[i] in "eE":
        i += 1
        if i < n and s[i] in "+-":
            i += 1
        if i >= n:
            return eof, i
        if not ("0" <= s[i] <= "9"):
            return f"invalid character {quote_char(s[i])} in exponent of numeric literal", i
        while i < n and "0" <= s[i] <= "9":
            i += 1
    return None, i


def _scan_literal(s: str, i: int, eof: str) -> tuple[str | None, int]:
    word = {"t": "true", "f": "false", "n": "null"}[s[i]]
    for k in range(1, len(word)):
        j = i + k
        if j >= len(s):
            return eof, j
        if s[j] != word[k]:
            return f"invalid character {quote_char(s[j])} in literal {word} (expecting '{word[k]}')", j
    return None, i + len(word)


# -- base64 -----------------------------------------------------------------------------------------

_B64_STRICT = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64decode(text: str) -> bytes:
    """base64.StdEncoding.DecodeString: padded standard alphabet, CR/LF ignored; errors name
    the byte offset exactly as Go does."""
    if len(text) % 4 == 0 and _B64_STRICT.fullmatch(text):
        try:
            return base64.b64decode(text)
        except binascii.Error:
            pass  # e.g. "Zg=a"-like shapes: let the exact decoder find the offset
    return _go_b64decode(text.encode("utf-8", "surrogateescape"))


def _corrupt(at: int) -> GoJSONError:
    return GoJSONError(f"illegal base64 data at input byte {at}")


def _go_b64decode(src: bytes) -> bytes:
    out = bytearray()
    si = 0
    n = len(src)
    while True:
        quantum: list[int] = []
        j = 0
        dlen = 4
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                raise _corrupt(si - j)
            c = src[si]
            si += 1
            if c in _B64_ALPHABET:
                quantum.append(c)
                j += 1
                continue
            if c in (0x0A, 0x0D):
                continue
            if c != 0x3D:  # '='
                raise _corrupt(si - 1)
            # padding
            if j in (0, 1):
                raise _corrupt(si - 1)
            if j == 2:
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    raise _corrupt(n)
                if src[si] != 0x3D:
                    raise _corrupt(si - 1)
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            if si < n:
                raise _corrupt(si)
            dlen = j
            break
        chunk = bytes(quantum) + b"=" * (4 - len(quantum))
        out += base64.b64decode(chunk)[: dlen - 1] if dlen < 4 else base64.b64decode(chunk)
        if dlen < 4:
            return bytes(out)


# -- encoding ---------------------------------------------------------------------------------------

_GO_ESCAPES = re.compile(r"[<>&\u2028\u2029]|\\\\|\\b|\\f")
_GO_REPLACE = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
    "\\\\": "\\\\",
    "\\b": "\\u0008",
    "\\f": "\\u000c",
}


def dumps(obj: Any) -> str:
    """Compact JSON as Go's encoder writes it (HTML-safe escapes, \\u0008 for backspace)."""
    out = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if _GO_ESCAPES.search(out) is None:
        return out
    return _GO_ESCAPES.sub(lambda m: _GO_REPLACE[m.group(0)], out)
