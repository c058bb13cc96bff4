"""Re-record sample_data/lake: the sample shop's traffic through a real collector.

`python sample_data/record.py` replaces sample_data/lake with a small lake (the shop's
default flag rollout and regression, 3,000 requests over one hour) so that
`flagscope query --lake sample_data/lake …` and `flagscope diff --lake sample_data/lake …`
work without running anything. Its times are those of the recording: use a window that
covers them (`flagscope flags --lake sample_data/lake` shows first and last seen).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import shop

from flagscope.collector.config import Settings
from flagscope.collector.server import Collector


async def record(target: Path) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            http_endpoint="127.0.0.1:0",
            grpc_endpoint="127.0.0.1:0",
            data_dir=data_dir,
            lake_dir=str(target),
            writer_id="sample",
            retention_days=0,
            flush_interval_s=0.5,
        )
        collector = Collector(settings, workers=1)
        await collector.start()
        try:
            counts = await asyncio.to_thread(
                shop.run,
                f"http://127.0.0.1:{collector.http_port}",
                f"127.0.0.1:{collector.grpc_port}",
                shop.ShopConfig(requests=3000, seed=3),
            )
        finally:
            await collector.stop()
    return counts


def main() -> None:
    target = HERE / "lake"
    shutil.rmtree(target, ignore_errors=True)
    counts = asyncio.run(record(target))
    size = sum(p.stat().st_size for p in target.rglob("*.parquet"))
    print(
        f"recorded {counts['requests']} requests into {target.relative_to(HERE.parent)} "
        f"({size / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()
