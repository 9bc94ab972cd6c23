"""The one exception the app raises for input it cannot use, and how a message reaches a person.

`InputError` is raised where input is checked (a photo, an uploaded file, a hyper-parameter, a
batch size) and caught only at the page's edge (`app.ui.events`), which shows its message
through `for_person`. Every other exception is a bug: the edge logs it with its traceback and
shows the person that it is one, with no internals, and nothing made by it is cached. No message
names a folder of the server (`file_names_only`), and none is longer than
`limits.MAX_MESSAGE_CHARS`.
"""
import re

from gtp.weights import public_message

from .limits import MAX_MESSAGE_CHARS
from .plain import plain_text, short_numbers

_FOLDERS = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"`]+)+[\\/](?=[^\\/\s'\"`]+)")


def file_names_only(text: str) -> str:
    """`text` with every absolute path cut to its file name: the page never shows where a file
    lies on the server ("/srv/cache/x/model.safetensors" -> "model.safetensors")."""
    return _FOLDERS.sub("", text)


def for_person(text: str) -> str:
    """A message as the page and the API show it: one line of plain text naming no server
    folder, long numbers named by their length, at most `limits.MAX_MESSAGE_CHARS` characters."""
    text = short_numbers(str(text)[: 2**16])[: 16 * MAX_MESSAGE_CHARS]  # cut before any other scan
    return public_message(plain_text(file_names_only(text), 2 * MAX_MESSAGE_CHARS), MAX_MESSAGE_CHARS)


class InputError(Exception):
    """Input the app cannot use; the message is for the person and says what to do."""
