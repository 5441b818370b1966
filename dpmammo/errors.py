"""The one error type that reaches a user as a one-line message (no traceback).

Anything that is the user's to fix (a bad config key, a missing data folder, a wrong weight
file) raises `DpMammoError`; the CLI prints `error: <message>` and exits 2. Anything else is a
bug and keeps its traceback.
"""


class DpMammoError(Exception):
    """A problem with the user's input, stated as what is wrong and what to do."""
