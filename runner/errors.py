"""The errors a user can fix (bad input, missing data, a stale checkpoint): UserError, which
`exit_on_error` prints as one line on stderr with exit code 2. Every module of the experiments raises
them; this one imports nothing of this repository."""
import sys


class UserError(Exception):
    """A problem the user can fix (bad input, missing data, stale checkpoint): shown as one line."""


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
