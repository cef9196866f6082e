"""Progress and interruption: a progress line, and the stop flag that lets a run save its checkpoint at
Ctrl-C or at a cluster's preemption signal."""
import math
import os
import signal
import sys
import time

import submitit


class Progress:
    """A dependency-free progress line: count, rate, ETA. Redrawn in place on a terminal, else a line
    every 30 s, so log files stay short."""

    def __init__(self, total, desc, unit="it", start=0):
        self.total, self.desc, self.unit, self.start = total, desc, unit, start
        self.t0 = self.last = time.time()
        self.tty = sys.stderr.isatty()
        self.extra = ""

    def update(self, done, extra=None):
        self.extra = extra if extra is not None else self.extra
        now = time.time()
        if done < self.total and now - self.last < (0.5 if self.tty else 30):
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = f"{self.desc} {done}/{self.total} {rate:.2f} {self.unit}/s ETA {format_seconds(eta)} {self.extra}"
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if done >= self.total and self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def format_seconds(s):
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


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
