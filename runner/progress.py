"""Progress and interruption: a progress line, and the stop flag that lets a run save its checkpoint at
Ctrl-C or at a cluster's preemption signal."""
import math
import os
import signal
import sys
import time

import submitit


PROJECT_AFTER = 60  # seconds of measuring before the whole run's time is projected
DAY = 24 * 3600


class Progress:
    """A dependency-free progress line: count, rate, ETA. Redrawn in place on a terminal, else a line
    every 30 s with a timestamp, so log files stay short and say when. `later`: the units of this run's
    work still to come after this bar's (the models still to train), projected at this bar's rate, so
    that the ETA covers the run; once, after PROJECT_AFTER seconds, a line projects the whole run."""

    def __init__(self, total, desc, unit="it", start=0, later=0, on_cpu=False, clock=time.time):
        self.total, self.desc, self.unit, self.start, self.later, self.on_cpu = total, desc, unit, start, later, on_cpu
        self.clock = clock
        self.t0 = self.last = clock()
        self.tty = sys.stderr.isatty()
        self.extra = ""
        self.projected = False

    def update(self, done, extra=None):
        self.extra = extra if extra is not None else self.extra
        now = self.clock()
        if done < self.total and now - self.last < (0.5 if self.tty else 30):
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        run_eta = eta + self.later / rate if rate > 0 else float("inf")
        line = (f"{self.desc} {done}/{self.total} {rate:.2f} {self.unit}/s ETA {format_seconds(eta)}"
                + (f" (run {format_seconds(run_eta)})" if self.later else "") + f" {self.extra}")
        self.write(line, done >= self.total)
        if not self.projected and now - self.t0 >= PROJECT_AFTER and done < self.total + self.later:
            self.projected = True
            self.write(projection(run_eta, rate, self.unit, self.on_cpu), True)

    def write(self, line, ends):
        """A line on stderr: redrawn in place on a terminal (and ended where `ends`), else timestamped."""
        if not self.tty:
            stamped(line)
            return
        sys.stderr.write("\r" + line + "\033[K" + ("\n" if ends else ""))
        sys.stderr.flush()


def stamped(line):
    "A line on stderr that says when it was written, for a log read later."
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    sys.stderr.flush()


def projection(seconds, rate, unit, on_cpu):
    """The line that projects the rest of a run from its measured rate; past a day on a CPU, it says so
    and names the shorter runs."""
    line = f"projected: {format_duration(seconds)} for the rest of this run, at the {rate:.2f} {unit}/s measured so far"
    if on_cpu and seconds > DAY:
        line += ("; that is past a day on this CPU: --quick is a smoke test of minutes, --iters N trains N iterations "
                 "per model (the schedule scales with it), and a GPU is the device for the full protocol")
    return line


def format_seconds(s):
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def format_duration(s):
    """A projection's length: hours and minutes, or days past two days."""
    if not math.isfinite(s):
        return "an unknown time"
    return f"{s / DAY:.1f} days" if s > 2 * DAY else format_seconds(s) + (" h" if s >= 3600 else " min")


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop reads between iterations, so that a killed
    run saves a consistent checkpoint (never one taken halfway through a minimax step).

    In a submitit job the preemption signal (SLURM's warning before the time limit, or a preemption)
    is flagged too and, once the checkpoint is saved, handed to submitit's handler, which requeues the
    job; SIGTERM is left to submitit there, since SLURM sends it along with a preemption."""

    def __init__(self):
        self.raised = None

    def __enter__(self):
        self.saved = {}
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            preempt = preemption_signal()
            for sig in (signal.SIGINT, preempt) if preempt else (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = signum

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        if self.raised is not None and self.raised == preemption_signal() and callable(self.saved[self.raised]):
            self.saved[self.raised](self.raised, None)  # submitit requeues the job and exits


def preemption_signal():
    """The signal by which submitit tells one of its jobs to checkpoint (USR2 unless SUBMITIT_PREEMPT_SIGNAL
    names another), or None outside a submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()
