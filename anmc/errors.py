"""The one exception type the command line turns into a message and exit code 2 (no traceback).

Every error that is the user's to fix (a malformed .anm file, a missing or corrupt video, a checkpoint
from another model, a wrong shape) derives from `UserError`, and its `str` says what is wrong and
what to do.
"""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do."""
