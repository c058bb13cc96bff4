"""The analysis's errors; messages name the fix (CONVENTIONS.md)."""

from flagscope.collector.errors import FlagscopeError


class AnalysisError(FlagscopeError):
    """A user mistake or an impossible request; the CLI prints it and exits 2."""
