"""The one exception type that scripts turn into a one-line message instead of a traceback."""
import sys


class UserError(Exception):
    """Bad input from the user (a path, a file, a flag): the message names it and says what was expected."""


def exit_code(prog, run, *args):
    """run(*args) -> its exit code; a UserError becomes `prog: error: message` on stderr and exit code 2."""
    try:
        return run(*args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
