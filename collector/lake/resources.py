"""How much memory a lake query may use, and where it spills the rest (issue 12).

DuckDB's own default is 80 % of RAM per connection, with nothing bounding it beside the
collector's writers or a second report; a 100 M-event diff took 5.4 GiB and the bare query
10 GiB. Each reader's connection (`read`) is limited to `FLAGSCOPE_MEMORY_LIMIT` — a size
such as `4GB` or a share of RAM such as `40%`; 25 % of RAM by default — and spills what
does not fit to `FLAGSCOPE_SPILL_DIR` (default: a directory of its own per connection under
the system's temporary directory, which DuckDB removes when the connection closes). A 2 GB
limit on a 100 M diff spilled and finished, at +27 % CPU (issue 12's measurement).

Why 25 %: the lake is read through the page cache, and memory DuckDB takes is memory the
cache loses. The 100 M-event diff over an 18 GB lake on a 24 GiB machine took 52.8 s and
6.15 GiB at 25 %, 60.3 s and 9.48 GiB at 40 % (page cache warm; bench/RESULTS.md).

`FLAGSCOPE_THREADS` caps the threads of each connection (DuckDB's default: one per core),
for a box shared with other work, or many small diffs run side by side in processes of
their own (the test suite's simulations: on their ~30 k-row lakes a replicate, its lake
written and its diff run, took ~10 % less CPU on one thread than on two).
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from pathlib import Path

from flagscope.collector.errors import ConfigError

MEMORY_ENV = "FLAGSCOPE_MEMORY_LIMIT"
SPILL_ENV = "FLAGSCOPE_SPILL_DIR"
THREADS_ENV = "FLAGSCOPE_THREADS"
DEFAULT_SHARE = 0.25
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)", re.IGNORECASE)
_SHARE = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_CONNECTIONS = itertools.count()


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit(text: str | None = None) -> str:
    """DuckDB's `memory_limit` for `text` (default: the environment's setting)."""
    text = (os.environ.get(MEMORY_ENV, "") if text is None else text).strip()
    if not text:
        return f"{int(physical_memory() * DEFAULT_SHARE) // 2**20}MiB"
    size, share = _SIZE.fullmatch(text), _SHARE.fullmatch(text)
    if size and float(size[1]) > 0:
        return f"{size[1]}{size[2].upper().replace('I', 'i')}"
    if share and 0 < float(share[1]) <= 100:
        return f"{int(physical_memory() * float(share[1]) / 100) // 2**20}MiB"
    raise ConfigError(
        f"{MEMORY_ENV}={text!r} is not a memory size: set it to a size such as 4GB or 512MB, "
        "or a share of RAM such as 25%"
    )


def thread_limit() -> int | None:
    """The environment's cap on a connection's threads, or None (DuckDB's default)."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(f"{THREADS_ENV}={text!r} is not a number of threads: set it to 1 or more")


def spill_directory() -> Path:
    """Where a lake connection spills what does not fit in memory: a directory of its own
    (DuckDB removes the directory it created, spilled files and all, when it closes)."""
    chosen = os.environ.get(SPILL_ENV, "").strip()
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / f"flagscope-spill-{os.getpid()}-{next(_CONNECTIONS)}"
