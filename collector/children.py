"""What every child process of the collector does first: die with it, and leave the stop
signals to it.

A SIGTERM for the whole process group (a terminal's Ctrl-C, systemd) is the collector's
to handle: it stops its children in order (the lake writers drain the WAL, the JSON
decoders finish their requests). A kill -9 of the collector must take them down too, or
an orphan would hold the data dir's files while a successor starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it dies, even by kill -9
    (start children from a thread that lives as long as the collector)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def ignore_stop_signals() -> None:
    """Ignore SIGTERM/SIGINT from now on, and unblock them (a parent may start its child
    with them blocked, so that none is lost before this runs)."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def child_process_init() -> None:
    die_with_parent()
    ignore_stop_signals()
