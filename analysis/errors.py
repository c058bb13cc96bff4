"""One exception root for the analysis; messages name the fix (CONVENTIONS.md)."""

from flagscope.collector.errors import CollectorError


class AnalysisError(CollectorError):
    """A user mistake or an impossible request; the CLI prints it and exits 2."""
