from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningCollector, make_settings

_REPO_EXAMPLES = Path(__file__).resolve().parent / "data" / "otlp-examples"


@pytest.fixture(scope="session")
def otlp_examples() -> Path:
    """The OTLP spec's example payloads (a copy lives in tests/data for a lone checkout)."""
    return _REPO_EXAMPLES


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    """One real collector per test module: HTTP and gRPC on loopback port 0, 1 MiB limit."""
    running = RunningCollector(make_settings(tmp_path_factory.mktemp("collector"))).start()
    yield running
    running.stop()
