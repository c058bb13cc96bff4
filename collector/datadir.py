"""One collector per data directory: an exclusive lock on `<data_dir>/.lock`.

Held by `flagscope serve` for its whole run, and by offline WAL tools (`flagscope requeue`)
for theirs, so the two never number WAL segments at the same time.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from flagscope.collector.errors import ConfigError


def lock_data_dir(data_dir: str | Path, purpose: str = "use it") -> IO[str]:
    """The open, locked lock file (keep it open while working); ConfigError if taken."""
    path = Path(data_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - the caller holds it while it works
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise ConfigError(
            f"another collector is using {data_dir}; stop it to {purpose}, or pass "
            "--data-dir to use another directory"
        ) from exc
    return handle
