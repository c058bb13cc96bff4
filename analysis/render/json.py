"""The JSON report: the result's documented dict form (`flagscope.analysis.result.to_dict`)."""

from __future__ import annotations

import orjson

from flagscope.analysis.result import DiffResult


def render(r: DiffResult) -> str:
    return orjson.dumps(r.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
