from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningCollector, make_settings
from tests.webhook_receiver import Hook

_REPO_EXAMPLES = Path(__file__).resolve().parent / "data" / "otlp-examples"


@pytest.fixture(scope="session")
def otlp_examples() -> Path:
    """The OTLP spec's example payloads (a copy lives in tests/data for a lone checkout)."""
    return _REPO_EXAMPLES


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A webhook receiver on loopback that records POSTs and answers from `hook.script`."""
    with Hook() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    """One real collector per test module: HTTP and gRPC on loopback port 0, 1 MiB limit."""
    running = RunningCollector(make_settings(tmp_path_factory.mktemp("collector"))).start()
    yield running
    running.stop()


# Tests that run a real collector on a loopback socket (in-process or as `flagscope serve`):
# `make test-fast` leaves them out; `make test` (CI) runs everything.
_SOCKET_FIXTURES = {"server", "collectors"}
_SOCKET_NAMES = ("RunningCollector", "CollectorProcess", "running(", "record_regressed_shop")


# Tests that measure time or memory against a bound, or race a signal against load: `make
# test` runs them on their own after the rest, which runs on three workers (a neighbour's
# DuckDB scan on the same two cores would stretch a deadline they check).
SERIAL_FILES = {
    "test_budget.py",
    "test_connections.py",
    "test_durability.py",
    "test_grpc_memory.py",
    "test_json_ingest.py",
    "test_lag.py",
    "test_slow_client.py",
    "test_wal_faults.py",
}


# The longest files (a minute or more of one worker each), started first: xdist hands out
# files in collection order, and one of these begun last would leave the other workers
# idle while it runs.
LONGEST_FILES = (
    "test_production_simulation.py",
    "test_spark_engine.py",
    "test_unbalanced_cohorts.py",
    "test_cuped.py",
    "test_several_collectors.py",
    "test_otlp_json.py",
    "test_guard_detection.py",
    "test_ui_different.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: place for place, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(Path(str(item.fspath)).name, len(first)))
    sources: dict[Path, bool] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
        if path not in sources:
            text = path.read_text()
            sources[path] = any(name in text for name in _SOCKET_NAMES)
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _SOCKET_FIXTURES or sources[path]:
            item.add_marker(pytest.mark.socket)
