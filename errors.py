"""The one exception type that scripts turn into a one-line message instead of a traceback."""
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (a path, a file, a flag): the message names it and says what was expected."""


def not_a_file(path, kind):
    """Why path cannot be read as the file a flag names -> "is a folder, not KIND" or "does not exist", or None
    when it is a file: the ending of the caller's one-line error."""
    path = Path(path)
    if path.is_file():
        return None
    return f"is a folder, not {kind}" if path.is_dir() else "does not exist"


def exit_code(prog, run, *args):
    """run(*args) -> its exit code; a UserError becomes `prog: error: message` on stderr and exit code 2."""
    try:
        return run(*args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
