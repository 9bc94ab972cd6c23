"""Text from outside (an uploaded file's names, a value sent to the API) made safe to show: one
short line of plain characters.

Control characters and line breaks become spaces. Unicode "format" characters (category Cf) are
dropped: they are invisible, and the bidirectional ones (U+202E RIGHT-TO-LEFT OVERRIDE, U+2066..)
make a label read as something else ("evil\\u202egnp.pth" shows as "evilhtp.png"); the zero-width
ones (U+200B, U+2060, U+FEFF) make two equal-looking names differ.

Text shown on the page is shown as text, never as markup: `as_markdown` for a gr.Markdown (every
ASCII punctuation character backslash-escaped, so no tag, image, link, autolink or emphasis can
form), `as_html` for a toast (gr.Warning, gr.Info and gr.Error render their message as HTML).
"""
from __future__ import annotations

import html
import math
import re
import reprlib
import unicodedata
from typing import Any

from .limits import MAX_LABEL_CHARS

_NOT_PRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_LONG_NUMBER = re.compile(r"\d{24,}")
_MARKDOWN_SPECIAL = re.compile(r"""([!-/:-@\[-`{-~])""")  # every ASCII punctuation character

SHOWN_CHARS = 60
"""Longest value a message repeats (a value sent to the API can be a megabyte)."""

_REPR = reprlib.Repr()  # the repr of a long string or list is cut while it is made
_REPR.maxstring = _REPR.maxother = SHOWN_CHARS - 4


def plain_text(value: Any, limit: int = MAX_LABEL_CHARS) -> str:
    """`value` as one line of at most `limit` characters (an ellipsis where cut): no control or
    format characters, runs of spaces squeezed to one."""
    text = str(value)[: limit * 4]  # enough to fill `limit` after squeezing spaces
    if not text.isascii():
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = " ".join(_NOT_PRINTABLE.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """How a message repeats a value it refuses: its repr as plain text, cut to `limit`
    characters; a whole number of hundreds of digits is named by its length, not written out."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**24:
        digits = int(abs(value).bit_length() * math.log10(2)) + 1  # str() refuses past 4,300 digits
        return f"a whole number of about {digits:,} digits"
    if isinstance(value, str):  # a long run of digits named by its length before the repr cuts it
        value = short_numbers(value[: 2**16])
    return plain_text(short_numbers(_REPR.repr(value)), limit)


def short_numbers(text: str) -> str:
    """`text` with every run of 24 digits or more named by its length ("a number of 4,300 digits")."""
    return _LONG_NUMBER.sub(lambda m: f"(a number of {len(m[0]):,} digits)", text)


def as_markdown(text: Any) -> str:
    """`text` to place inside a gr.Markdown's value and be read there as it is: every ASCII
    punctuation character escaped with a backslash (CommonMark: then it is only itself), so no
    HTML tag, image, link, autolink ("http://", "www."), emphasis, list or heading can form."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def as_html(text: Any) -> str:
    """`text` for a toast (gr.Warning/gr.Info/gr.Error put their message in the page as HTML):
    `&`, `<`, `>` and quotes as character references, so no element can form."""
    return html.escape(str(text), quote=True)
