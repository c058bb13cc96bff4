"""Which pieces a window is cut into: whole hours, kept between runs, and the partial
hours at its ends, computed afresh each run."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

HOUR = timedelta(hours=1)
# How far beyond a piece its requests and evaluations are read, so that a trace crossing
# the piece's edge is labelled, given its user and its one edge request as a whole
# window would (DESIGN: one request per trace). A trace longer than this that crosses an
# hour boundary is the one case where a summarised window can differ from a rescan.
REACH = timedelta(minutes=2)


@dataclass(frozen=True)
class Piece:
    start: datetime  # naive UTC, as the lake's times
    end: datetime
    first: bool  # starts the window: its trace edges look no earlier than `start`
    last: bool  # ends the window: … no later than `end`

    @property
    def whole_hour(self) -> bool:
        """Kept between runs: exactly one hour partition."""
        return is_whole_hour(self.start, self.end)

    @property
    def edge_bit(self) -> int:
        """Which of a summarised row's edge bits applies (`summarize.EDGE_BITS`)."""
        return int(not self.first) + 2 * int(not self.last)


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_cuts(start: datetime, end: datetime) -> list[datetime]:
    """`start`, every hour boundary inside (start, end), and `end`."""
    cuts = [start]
    boundary = floor_hour(start) + HOUR
    while boundary < end:
        cuts.append(boundary)
        boundary += HOUR
    return [*cuts, end]


def is_whole_hour(start: datetime, end: datetime) -> bool:
    """[start, end) is exactly one hour partition."""
    return end - start == HOUR and floor_hour(start) == start


def pieces(start: datetime, end: datetime, reach: timedelta = REACH) -> list[Piece]:
    """[start, end) cut at every hour boundary inside it; a partial end piece shorter
    than `reach` joins its neighbour, so no piece reads beyond the window by more than
    its own `reach` on the side where the window goes on."""
    if end <= start:
        return []
    cuts = hour_cuts(start, end)
    if len(cuts) > 2 and cuts[1] - cuts[0] < reach:
        del cuts[1]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < reach:
        del cuts[-2]
    last = len(cuts) - 2
    return [Piece(a, b, i == 0, i == last) for i, (a, b) in enumerate(itertools.pairwise(cuts))]
