"""The one exception type for user errors (bad data, bad flags, missing files).

The CLI prints ``error: <message>`` and exits 2 for these; anything else is a bug and keeps its traceback.
"""


class TunelabError(Exception):
    """A problem the user can fix. The message says what, where (file, row, flag) and how to fix it."""
