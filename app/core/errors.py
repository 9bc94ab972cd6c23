"""The one exception the app raises for input it cannot use.

`InputError` is raised where input is checked (a photo, an uploaded file, a hyper-parameter, a
batch size) and caught only at the page's edge (`app.ui.events`), which shows its message as it
is. Every other exception is a bug: the edge logs it with its traceback and shows the person
that it is one, with no internals, and nothing made by it is cached.
"""


class InputError(Exception):
    """Input the app cannot use; the message is for the person and says what to do."""
