"""flagscope: is the flag-on cohort worse off than baseline?

The installed package. Its parts live in two folders of the repository, installed under
this name: `flagscope.collector` (collector/: OTLP in, WAL, Parquet lake) and
`flagscope.analysis` (analysis/: cohort diffs, reports, the CLI). This folder holds only
the package root: the version and `python -m flagscope`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flagscope")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
