"""The one exception type that scripts turn into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a path, a file, a flag): the message names it and says what was expected."""
