"""Queue policies beyond the core's fcfs: longest prefix match first, and priority.

Both read the waiting requests (never change them) and the cache's prefix-match length.
"""

from __future__ import annotations

from collections.abc import Sequence

from minisgl.engine.queue_policy import PrefixMatchLen
from minisgl.engine.request import Req


class LongestPrefixMatch:
    """Requests that reuse the most cached tokens run first (sglang's `lpm`): they cost the
    least prefill and keep hot prefixes locked while they are hot. Ties go by arrival.
    Retracted requests go first so preemption never starves anyone."""

    name = "lpm"

    def order(self, waiting: Sequence[Req], prefix_match_len: PrefixMatchLen) -> list[Req]:
        matched = {w.rid: prefix_match_len(w.token_ids) for w in waiting}
        return sorted(waiting, key=lambda w: (not w.retracted, -matched[w.rid], w.arrival_time, w.seq))


class Priority:
    """Higher `priority` first, then arrival order."""

    name = "priority"

    def order(self, waiting: Sequence[Req], prefix_match_len: PrefixMatchLen) -> list[Req]:
        return sorted(waiting, key=lambda w: (-w.priority, w.arrival_time, w.seq))
