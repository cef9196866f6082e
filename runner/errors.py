"""The errors a user can fix (bad input, missing data, a stale checkpoint): UserError, and the one way
out of every entry point, `exit_on_error`, which ends a UserError, a failed file operation of the
user's machine (a full disk, a name too long, no permission, a read-only file system), an output pipe
closed early, an output whose encoding cannot show what is printed and Ctrl-C each as one line on stderr
with its exit status. Every module of the
experiments raises them; this one imports nothing of this repository."""
import codecs
import errno
import os
import sys


class UserError(Exception):
    """A problem the user can fix (bad input, missing data, stale checkpoint): shown as one line."""


# errno -> what the user can do about it; an OSError of another errno is a bug, shown with its traceback
ADVICE = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (the disk quota is reached)",
          errno.ENAMETOOLONG: "choose a shorter name",
          errno.EACCES: "check its permissions, or choose a place you can write to",
          errno.EPERM: "check its permissions and that it is not immutable (lsattr), or choose another place",
          errno.EROFS: "its file system is read-only: choose a place on a writable one",
          errno.ENOTDIR: "a file stands where a folder should be: move it away, or choose another path",
          errno.EEXIST: "a file stands where a folder should be: move it away, or choose another path",
          errno.EISDIR: "it is a folder: name a file",
          errno.ENOENT: "check the path"}
STOPPED_BY_SIGPIPE = 128 + 13  # the status a shell shows for a process that wrote into a closed pipe
INTERRUPTED = 128 + 2          # and for one stopped by Ctrl-C (SIGINT)


def failure(err, limit=200):
    """An exception as a short part of a one-line message: an OSError's own words, else its type and
    text on one line, cut at `limit` characters (a library's message may run to pages)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def advice(err):
    """What a user can do about a failed file operation, from its cause."""
    return ADVICE.get(err.errno, "check the path and the disk")


def for_the_user(err):
    """Whether `err` is one that exit_on_error ends as the user's to fix (a UserError, a failed file operation
    of a cause in ADVICE), rather than a failure of the work under way: code that carries on past failures
    (one measurement of several) lets these through."""
    return isinstance(err, UserError) or (isinstance(err, OSError) and err.errno in ADVICE)


def kind_name(kind):
    """How a message names the values of a type: "an integer", not "a int"."""
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(kind, f"a {kind.__name__}")


def exit_on_error(main):
    """Runs `main()`, the one way out of every entry point: what the user can fix or did (a UserError,
    a file operation failed for a cause of the machine's, standard output closed early or in an encoding
    that cannot show what is printed, Ctrl-C) ends as
    one line on stderr and its exit status; anything else is a bug and keeps its traceback."""
    try:
        flushed(main)
    except UserError as err:
        stop(f"error: {err}", 2)
    except BrokenPipeError:
        stop("stopped: standard output was closed early (a pipe such as | head ended); what was written is kept",
             STOPPED_BY_SIGPIPE, stdout_gone=True)
    except OSError as err:
        if err.errno not in ADVICE:
            raise
        where = f"{err.filename}: " if err.filename else ""
        stop(f"error: {where}{err.strerror}; {advice(err)}", 2)
    except KeyboardInterrupt as err:
        stop(f"\ninterrupted: {str(err) or 'no checkpoint in progress'}; run the same command to resume", INTERRUPTED)
    except UnicodeEncodeError as err:
        if not of_a_standard_stream(err):
            raise
        stop(f"error: the output's encoding ({err.encoding}) cannot show {ascii(err.object[err.start:err.end])}, "
             "which this command prints; set PYTHONIOENCODING=utf-8", 2)


def of_a_standard_stream(err):
    """Whether a UnicodeEncodeError is the codec of stdout or stderr refusing a character (the user's terminal
    settings, say PYTHONIOENCODING=ascii or a console without U+2212), rather than a bug encoding text elsewhere."""
    streams = {codecs.lookup(s.encoding).name for s in (sys.stdout, sys.stderr) if getattr(s, "encoding", None)}
    return codecs.lookup(err.encoding).name in streams


def flushed(main):
    """main(), its output then flushed, also where it ends with sys.exit: a closed pipe shows here, as a
    BrokenPipeError, and not in Python's own flush at exit, which prints a traceback."""
    try:
        main()
    except SystemExit:
        sys.stdout.flush()
        raise
    sys.stdout.flush()


def stop(line, status, stdout_gone=False):
    """Ends the process with `line` on stderr. With stdout closed, what is still buffered for it goes
    nowhere, else Python's flush at exit would print a traceback of its own."""
    if stdout_gone:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture) flushes nowhere
            pass
    print(line, file=sys.stderr)
    sys.exit(status)
