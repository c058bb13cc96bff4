"""glibc malloc settings for the front end, so that memory a request freed serves the next
one or goes back to the system (issue 10 point 9).

glibc gives each thread an arena of its own, up to 8 per core, and memory freed in one
arena serves only the threads allocating from it: the threads that receive, decode and
write requests each kept their own high-water mark (eight 6 MiB exports one after another
left the front end 48 MiB larger, 9 MiB with two arenas). And its mmap threshold rises to
the largest block freed, so request-sized buffers, after the first, stay on the heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD_BYTES = 1024 * 1024  # a block this large is mapped, and unmapped when freed
ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")  # an operator's own, glibc applied them


def tune_malloc() -> bool:
    """Cap this process's malloc arenas and fix its mmap threshold. Affects arenas made
    from now on: call it before threads start. True if set; False without glibc, or when
    the environment sets either (the operator's choice stands)."""
    if any(name in os.environ for name in ENV) or platform.libc_ver()[0] != "glibc":
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, ARENAS)) and bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        )
    return False


def give_back() -> bool:
    """Return the heap's free memory to the system (glibc's malloc_trim). A decoder process
    that parsed a 60 MiB OTLP/JSON body peaked ~565 MiB above its start and kept 60–150 MiB
    of it afterwards; trimmed, ~45 MiB. True if trimmed; False without glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    return False
