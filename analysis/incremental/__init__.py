"""Incremental scheduled reports (issue 12 point 3): a window's statistics from kept
per-hour summaries, so that the hourly run of a 24 h report reads the new hour (and the
one before, which was still filling) and merges the 22 it keeps.

`plan` cuts the window into hours; `summarize` reduces an hour to per-user cells of
binned latencies (`bins`: ≤ 1 % relative error) with exact counts and sums; `store`
keeps them under the report directory with a fingerprint of the lake files they came
from (late data or compaction changes it: the hour is summarised again, nothing is
lost); `merge` forms from them the tables stage 3 of `cohorts` reads; `stage` offers it
all as `diff`'s cohort stage.
"""
