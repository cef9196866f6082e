"""The errors a user can fix (bad input, missing data, a stale checkpoint): UserError, which
`exit_on_error` prints as one line on stderr with exit code 2. Every module of the experiments raises
them; this one imports nothing of this repository."""
import sys


class UserError(Exception):
    """A problem the user can fix (bad input, missing data, stale checkpoint): shown as one line."""


def failure(err, limit=200):
    """An exception as a short part of a one-line message: an OSError's own words, else its type and
    text on one line, cut at `limit` characters (a library's message may run to pages)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def kind_name(kind):
    """How a message names the values of a type: "an integer", not "a int"."""
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(kind, f"a {kind.__name__}")


def exit_on_error(main):
    """Runs `main()`; a UserError or an interruption becomes one line on stderr and a non-zero exit."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"\ninterrupted: {err or 'no checkpoint in progress'}; run the same command to resume", file=sys.stderr)
        sys.exit(130)
