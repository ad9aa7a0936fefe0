"""Error type for problems with the user's input.

Everything the user can fix (a missing file, an empty image, NaN values, mismatched pair
sizes, wrong weights) raises :class:`InputError` with a one-line message naming the file and the
problem. The CLI turns it into that line on stderr and exit status 2, with no traceback;
anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """The input (file, image, option or weights) is unusable; the message says why."""
