"""Speculative decoding: a proposer drafts a decoding request's next tokens, one forward
runs the request's last token and the drafts (writing their K/V), every position is
sampled, and the drafts are kept while they equal what was sampled.

A proposer's drafts are one guess each (a point mass), so "sample the target at every
position and keep the draft while it matches" is rejection sampling with acceptance
p(draft): each emitted token follows the target distribution exactly, greedy or sampled,
and a seeded request draws the same noise at each output index as without drafts. The
first position where the sample differs emits the sample and ends the run; the K/V of
the rejected drafts is truncated away (KVManager.truncate).

A request with a grammar keeps the longest prefix of its drafts the grammar allows, and
each of its positions is sampled under the mask of the grammar's state after the drafts
before it (grammar_masks.py), so it emits what it would without drafts.

Each request drafts as many tokens as pay (`draft_length`): with a chance a that a draft
token is accepted once the one before it was (estimated from the request's recent verifies)
and a verify row costing r plain steps (measured as the engine runs), L drafts give
1 + a + ... + a^L tokens for 1 + r L of a step's time, and the L in 0..k that gives the
most tokens per time wins. A request that copies drafts all k; one whose drafts keep
failing drafts one, where one costs little, then none for a while. A request's first
decode step and the first after each pause draft at least one token, so a cost measured
on a busy moment does not stop drafting for good.

Drafting also stops for batches of more than SPECULATE_UP_TO decoding requests (verifying
k + 1 tokens each then costs more than it saves), and for every request while a drafted
step's time over the tokens it gives exceeds a plain step's (a verify forward without the
decode step's CUDA graph can cost several plain steps on a small model): the engine times
decode steps of both kinds as it runs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..plugins import PluginError, SelectionError
from .request import Req

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..settings import Settings
    from .grammar_masks import GrammarMasks

log = logging.getLogger("minisgl.engine")

SPECULATE_UP_TO = 4  # decoding requests in a step; beyond, every request decodes plainly
PAUSE_STEPS = 16  # steps a request whose drafts do not pay decodes without them
DECAY = 0.8  # weight a request's earlier verifies keep at each new one
PLAIN_EVERY = 64  # drafted steps between plain ones that keep the plain step's time current
EMA = 0.2  # weight of the newest step in the running times of plain and drafted steps
JUDGE_AFTER = 8  # drafted steps judged at once: their total time against the tokens they gave
OFF_STEPS = 16  # steps without drafts once drafting did not pay; then it is timed afresh ...
MAX_OFF_STEPS = 8192  # ... and twice as many each time it still does not pay, up to this


class Proposer:
    """What a proposer plugin implements (subclass it): guesses of a request's next tokens."""

    def propose(self, req_id: str, token_ids: list[int], max_tokens: int) -> list[int]:
        """Up to `max_tokens` guesses of what follows request `req_id`'s `token_ids` ([] for
        none). Any state kept for the request may be stale: `token_ids` is the truth."""
        raise NotImplementedError

    def propose_batch(self, items: list[tuple[str, list[int], int]]) -> list[list[int]]:
        """`propose` for a step's requests at once: (req_id, token_ids, max_tokens) each. A
        proposer that runs a model overrides it to share its forwards."""
        return [self.propose(*item) for item in items]

    def release(self, req_id: str) -> None:
        """The request finished or was retracted: drop what is kept for it."""

    def shutdown(self) -> None:
        """The engine stops: free what the proposer holds (a draft model's runner)."""


def load_proposer(settings: Settings, registry: Registry) -> Proposer | None:
    """--speculative-algorithm's proposer (None: off), built from the plugin registry."""
    name = settings.speculative_algorithm
    if not name:
        return None
    try:
        spec = registry.get("proposer", name)
    except PluginError as exc:
        raise SelectionError(f"--speculative-algorithm: {exc}") from None
    log.info("speculative decoding: %s drafts up to %d tokens a step (%s); overlap scheduling off", spec.name,
             settings.speculative_num_draft_tokens, spec.description)
    proposer = spec.load()(settings)
    if not isinstance(proposer, Proposer):
        raise SelectionError(f"--speculative-algorithm {name}: its factory returned a {type(proposer).__name__}, "
                             "which does not subclass minisgl.engine.speculative.Proposer")
    return proposer


class NgramProposer(Proposer):
    """Prompt lookup: the longest suffix of the request's tokens (between the min and max
    match window) that occurred before; the tokens that followed its latest occurrence.
    Where those run into the end of the tokens (the text repeats with a period shorter than
    the draft, as a model stuck in a loop does), the period goes on repeating, as an LZ77
    copy that overlaps its source does."""

    def __init__(self, settings: Any) -> None:
        self.min_window = settings.speculative_ngram_min_match_window_size
        self.max_window = settings.speculative_ngram_max_match_window_size

    def propose(self, req_id: str, token_ids: list[int], max_tokens: int) -> list[int]:
        n = len(token_ids)
        if n < 2 or max_tokens <= 0:
            return []
        last = token_ids[-1]
        best_len, best_end = 0, -1
        for end in range(n - 2, -1, -1):  # latest occurrences first: a tie keeps the latest
            if token_ids[end] != last:
                continue
            length = 1
            while (length < self.max_window and end - length >= 0
                   and token_ids[end - length] == token_ids[n - 1 - length]):
                length += 1
            if length > best_len:
                best_len, best_end = length, end
                if length == self.max_window:
                    break
        if best_len < self.min_window:
            return []
        period = token_ids[best_end + 1:]
        return (period * -(-max_tokens // len(period)))[:max_tokens]

    def release(self, req_id: str) -> None:
        pass  # nothing is kept between proposals


class Speculation:
    def __init__(self, proposer: Proposer, num_draft_tokens: int, max_context_len: int, counters: Counter[str],
                 grammars: GrammarMasks | None = None) -> None:
        self.proposer = proposer
        self.grammars = grammars
        self.k = num_draft_tokens
        self.max_context_len = max_context_len
        self.counters = counters
        self.plain_s: float | None = None  # running time of a decode step without drafts
        self.drafted_s: float | None = None  # ... and of one with drafts
        # drafted steps since the last judgement: their time, and the tokens their verified
        # requests emitted (totals, not running averages: one request's emits swing
        # between 1 and k + 1 from step to step, so a running average misjudges)
        self.window_s, self.window_steps = 0.0, 0
        self.window_tokens, self.window_verifies = 0, 0
        self.drafted_steps = 0  # since the last plain step
        self.step_draft_s = 0.0  # the proposer's time for the step being built (a draft model's forwards)
        self.step_rows = 0  # draft tokens of the step being built ...
        self.drafted_rows: float | None = None  # ... and their running mean over drafted steps
        self.off_steps = 0  # steps left without drafts because drafting did not pay
        self.next_off = OFF_STEPS

    def draft(self, decoding: list[Req]) -> None:
        """Set each decoding request's `draft` (empty where it decodes plainly)."""
        speculate = len(decoding) <= SPECULATE_UP_TO and self._pays()
        wanted: list[tuple[Req, int]] = []
        for req in decoding:
            req.draft = []
            if not speculate or req.inflight or req.grammar is not None and self.grammars is None:
                continue
            if req.spec_pause > 0:
                req.spec_pause -= 1
                continue
            length = self.draft_length(req.spec_hits / (req.spec_hits + req.spec_misses))
            if req.spec_probe:  # one draft at least: what drafts cost and give is timed afresh
                length, req.spec_probe = max(length, 1), False
            elif length == 0:  # a probe after a pause, from the starting estimate
                req.spec_pause, req.spec_probe, req.spec_hits, req.spec_misses = PAUSE_STEPS, True, 1.0, 1.0
                continue
            # every emitted token must fit: the drafts and the one sampled after them
            room = min(req.max_new_tokens - req.num_output, self.max_context_len - len(req.all_ids)) - 1
            wanted.append((req, min(length, room)))
        self.step_rows, self.step_draft_s = 0, 0.0
        if not wanted:
            return
        start = time.perf_counter()
        drafts = self.proposer.propose_batch([(req.rid, req.all_ids, n) for req, n in wanted])
        self.step_draft_s = time.perf_counter() - start
        for (req, _), draft in zip(wanted, drafts):
            if req.grammar is not None and self.grammars is not None:
                draft = self.grammars.allowed_drafts(req, draft)
            req.draft = draft
            self.step_rows += len(draft)

    def draft_length(self, accept: float) -> int:
        """The number of drafts, 0..k, that gives the most tokens per step time when each is
        accepted with chance `accept` once the one before it was (see the module's doc)."""
        row_cost = self._row_cost()
        best, best_rate = 0, 1.0
        tokens, term = 1.0, 1.0
        for length in range(1, self.k + 1):
            term *= accept
            tokens += term
            rate = tokens / (1.0 + row_cost * length)
            if rate > best_rate:
                best, best_rate = length, rate
        return best

    def _row_cost(self) -> float:
        """A verify row's time in plain steps: a drafted step's extra time over a plain one,
        over its draft tokens; 0 (draft all k) until both kinds of step are timed."""
        if self.plain_s is None or self.drafted_s is None or not self.drafted_rows:
            return 0.0
        return max(0.0, self.drafted_s / self.plain_s - 1.0) / self.drafted_rows

    def release(self, req: Req) -> None:
        """`req` left the running batch (finished or retracted)."""
        self.proposer.release(req.rid)

    def _pays(self) -> bool:
        """Whether this step may draft: not while paused, and a plain step first (and every
        PLAIN_EVERY drafted steps) so that the plain step's time is known and current."""
        if self.off_steps > 0:
            self.off_steps -= 1
            return False
        return self.plain_s is not None and self.drafted_steps < PLAIN_EVERY

    def observe(self, seconds: float, drafted: bool) -> None:
        """A decode step's time; once both kinds are known, drafting pauses where it does
        not pay (a drafted step slower than the plain steps its tokens replace). A drafted
        step's time includes the proposer's, so a draft model's forwards count as cost."""
        if not drafted:
            self.plain_s = seconds if self.plain_s is None else (1 - EMA) * self.plain_s + EMA * seconds
            self.drafted_steps = 0
            return
        self.drafted_steps += 1
        seconds += self.step_draft_s
        self.drafted_s = seconds if self.drafted_s is None else (1 - EMA) * self.drafted_s + EMA * seconds
        rows = self.step_rows
        self.drafted_rows = rows if self.drafted_rows is None else (1 - EMA) * self.drafted_rows + EMA * rows
        self.window_s += seconds
        self.window_steps += 1
        if self.plain_s is None or self.window_steps < JUDGE_AFTER:
            return
        step_s = self.window_s / self.window_steps
        gain = self.window_tokens / max(self.window_verifies, 1)  # tokens a drafted request got a step
        self.window_s, self.window_steps, self.window_tokens, self.window_verifies = 0.0, 0, 0, 0
        if step_s > gain * self.plain_s:
            log.info("speculative decoding paused for %d steps: a drafted step takes %.1f ms for %.2f tokens "
                     "a request, a plain one %.1f ms", self.next_off, step_s * 1e3, gain, self.plain_s * 1e3)
            self.off_steps = self.next_off
            self.next_off = min(2 * self.next_off, MAX_OFF_STEPS)
        else:
            self.next_off = OFF_STEPS

    def verify(self, req: Req, sampled: list[int]) -> list[int]:
        """The tokens a drafted request emits, from those sampled at its positions: the
        first, and each next one while the draft before it was sampled too."""
        draft = req.draft
        emit = 1
        while emit <= len(draft) and sampled[emit - 1] == draft[emit - 1]:
            emit += 1
        kept = emit - 1
        self.window_tokens += emit
        self.window_verifies += 1
        c = self.counters
        c["spec_verify_steps_total"] += 1
        c["spec_draft_tokens_total"] += len(draft)
        c["spec_accepted_tokens_total"] += kept
        req.spec_hits = DECAY * req.spec_hits + kept
        req.spec_misses = DECAY * req.spec_misses + (kept < len(draft))
        return sampled[:emit]


def metrics(counters: Mapping[str, Any]) -> dict[str, float]:
    """The counters and what they mean: the share of drafts accepted, and the tokens a
    drafted request gains per verify step (1 without drafts)."""
    drafted, kept, steps = (counters.get(k, 0) for k in ("spec_draft_tokens_total", "spec_accepted_tokens_total",
                                                  "spec_verify_steps_total"))
    return {
        "spec_draft_tokens_total": drafted,
        "spec_accepted_tokens_total": kept,
        "spec_verify_steps_total": steps,
        "spec_acceptance_rate": kept / drafted if drafted else 0.0,
        "spec_mean_accepted_length": (kept + steps) / steps if steps else 0.0,
    }
