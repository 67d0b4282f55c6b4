"""The exceptions that scripts turn into a one-line message instead of a traceback, and the helpers that name
things in those messages."""
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (a path, a file, a flag): the message names it and says what was expected."""


class DataError(UserError):
    """Data that cannot be read as asked: the message names the file, folder, row or class."""


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


def some(names, shown=3):
    """The first `shown` of names, comma-separated, with how many more there are."""
    names = [str(n) for n in names]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def text_lines(path):
    """The lines of a UTF-8 text file (a byte-order mark dropped, line ends kept, as csv.reader wants them);
    DataError naming the file and the line of the first byte that is not UTF-8 (a file saved as Latin-1)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            yield from f
        except UnicodeDecodeError:
            pass
        else:
            return
    # The decoder reads ahead by blocks, so the place is found in the bytes.
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8") \
            from None
