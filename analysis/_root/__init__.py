"""flagscope: is the flag-on cohort worse off than baseline?

The installed package. Its parts live in two folders of the repository, installed under
this name: `flagscope.collector` (collector/: OTLP in, WAL, Parquet lake) and
`flagscope.analysis` (analysis/: cohort diffs, reports, the CLI). This folder holds only
the package root: the version and `python -m flagscope`.
"""

# Every import of any flagscope module runs this file (every CLI command, every lake
# writer process): the version is looked up only when asked for (importlib.metadata
# alone costs ~35 ms).


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module 'flagscope' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flagscope")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"
