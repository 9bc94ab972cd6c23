"""The one exception the app raises for input it cannot use.

`InputError` is raised where input is checked (a photo, an uploaded file, a hyper-parameter, a
batch size) and caught only at the page's edge (`app.ui.events`), which shows its message as it
is. Every other exception is a bug: the edge logs it with its traceback and shows the person
that it is one, with no internals, and nothing made by it is cached. No message names a folder
of the server (`file_names_only`).
"""
import re

_FOLDERS = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"`]+)+[\\/](?=[^\\/\s'\"`]+)")


def file_names_only(text: str) -> str:
    """`text` with every absolute path cut to its file name: the page never shows where a file
    lies on the server ("/srv/cache/x/model.safetensors" -> "model.safetensors")."""
    return _FOLDERS.sub("", text)


class InputError(Exception):
    """Input the app cannot use; the message is for the person and says what to do."""
