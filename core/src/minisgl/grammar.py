"""Structured outputs: the grammar a request's answer must follow, on llguidance.

A request names at most one constraint (sglang's sampling parameters `json_schema`, `regex`,
`ebnf`; OpenAI's `response_format` becomes `json_schema`). The request layer checks it
against the model's tokenizer before anything is queued (a bad one is a 400 with
llguidance's reason); the engine gives the request a matcher, fills its row of the token
bitmask before each sample (the sampler masks the logits on the device) and feeds it every
sampled token (a step's rows at once). Once the grammar is complete, only EOS is allowed and
the request stops.

The library is a plugin (--grammar-backend, GrammarBackendSpec); the built-in one is
llguidance, not xgrammar (server/bench/grammar_backends.py compares them; figures in
BENCHMARKS.md): both masks are exact; xgrammar fills them faster, but the fill is a small
share of a decode step either way, llguidance compiles lazily and installs as one small
wheel where xgrammar pulls Triton on Linux, and xgrammar compiles a string with maxLength
to a pattern that admits control characters, so its JSON answers can fail to parse.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Protocol

import msgspec

GRAMMAR_FIELDS = ("json_schema", "regex", "ebnf")
_FORMATS = {"json_schema": "json_schema", "regex": "regex", "ebnf": "gbnf"}
ANY_JSON_OBJECT = '{"type": "object"}'


class GrammarError(ValueError):
    """A constraint llguidance cannot compile; the message is llguidance's reason."""


def _llguidance() -> Any:
    """Imported on first use: processes that never see a constraint never load it."""
    import llguidance
    import llguidance.hf
    import llguidance.torch

    return llguidance


def constraint_of(params: Any) -> tuple[str, str] | None:
    """(field, source) of the request's constraint, None without one."""
    for name in GRAMMAR_FIELDS:
        value = getattr(params, name, None)
        if value is not None:
            return name, value
    return None


def response_format_schema(response_format: Any) -> str | None:
    """OpenAI's response_format as a JSON schema: json_object is any object, json_schema its
    schema, text (or none) nothing. Raises GrammarError for a json_schema without one."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return ANY_JSON_OBJECT
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise GrammarError("response_format json_schema needs json_schema.schema")
    return msgspec.json.encode(spec.schema_).decode()


class GrammarBackend(Protocol):
    """What a grammar backend (--grammar-backend; a plugin's GrammarBackendSpec) provides.
    The factory is called with the model's transformers tokenizer and the model's vocabulary
    size (rows of the logits; None: the tokenizer's), once per process that needs it. The
    forced tool calls of minisgl.frontend.tool_calls arrive as `ebnf` in llguidance's Lark
    dialect; a backend that cannot compile them says so with a GrammarError (a 400).

    Two optional methods let constrained requests draft under speculative decoding (without
    them those requests decode plainly): `draft_prefix(matcher, tokens) -> int`, how many of
    the drafted `tokens` the grammar allows in order without completing (a token after which
    it is done is not counted), the matcher left where it was; and `fill_drafts(rows,
    bitmask)`, `fill` for (matcher, row, drafts) with drafts `draft_prefix` allowed: row
    `row + j` gets the mask after drafts[:j], j = 0 .. len(drafts), the matcher left where
    it was."""

    def check(self, field: str, source: str) -> None:
        """Raise GrammarError, with the reason, if `source` (a GRAMMAR_FIELDS constraint) cannot be compiled."""

    def matcher(self, field: str, source: str) -> Any:
        """One request's place in its grammar, with `done` (complete: only EOS may follow)
        and `error` (why the last token was refused)."""

    def accept(self, tokens: list[tuple[Any, int]]) -> list[bool]:
        """Advance each matcher by its sampled token, all of a step's at once; False where
        the grammar did not allow it. Called on the mask worker thread, or the engine's."""

    def fill(self, rows: list[tuple[Any, int]], bitmask: Any) -> None:
        """For each (matcher, row): row `row` of an int32 bitmask [rows, ceil(vocab / 32)],
        cleared to 0 beforehand, bit t set = token t allowed next. Called on a worker thread
        while the forward runs (on a CPU engine, on the engine's thread before it)."""


_views: dict[tuple[str, int | None], Any] = {}
_views_lock = threading.Lock()


def tokenizer_view(hf_tokenizer: Any, vocab_size: int | None = None) -> Any:
    """llguidance's view of a transformers tokenizer over `vocab_size` tokens (None: the
    tokenizer's own), built once per process for each tokenizer path and size (building one
    is slow, BENCHMARKS.md): the request layer and an engine in one process (LLM) share it. A
    tokenizer without a path (built in memory) gets a view of its own."""
    build = _llguidance().hf.from_tokenizer
    path = hf_tokenizer.name_or_path
    if not path:
        return build(hf_tokenizer, n_vocab=vocab_size)
    with _views_lock:
        key = (str(path), vocab_size)
        if key not in _views:
            _views[key] = build(hf_tokenizer, n_vocab=vocab_size)
        return _views[key]


_grammars: collections.OrderedDict[tuple[int, str, str], tuple[Any, str]] = collections.OrderedDict()
_grammars_lock = threading.Lock()
GRAMMARS_KEPT = 256


def compiled_grammar(view: Any, field: str, source: str) -> str:
    """`source` compiled and validated against a tokenizer view, once per process: the
    request layer's check and the engine's matcher of one request (LLM) share it."""
    key = (id(view), field, source)
    with _grammars_lock:
        if key in _grammars:
            _grammars.move_to_end(key)
            return _grammars[key][1]
    llg = _llguidance()
    try:
        grammar = llg.grammar_from(_FORMATS[field], source)
    except ValueError as exc:
        raise GrammarError(str(exc)) from None
    error = llg.LLMatcher.validate_grammar(grammar, view)
    if error:
        raise GrammarError(error.strip())
    with _grammars_lock:
        _grammars[key] = (view, grammar)  # the view stays alive while its id is a key
        if len(_grammars) > GRAMMARS_KEPT:
            _grammars.popitem(last=False)
    return grammar


class LLGuidance:
    """The built-in backend: llguidance's view of one tokenizer (`tokenizer_view`, on first
    use), the grammars compiled so far, and masks filled in parallel."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int | None = None) -> None:
        self._hf = hf_tokenizer
        self._vocab_size = vocab_size
        self._lock = threading.Lock()
        self._tok: Any = None
        self._executor: Any = None

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            if self._tok is None:
                self._tok = tokenizer_view(self._hf, self._vocab_size)
            return self._tok

    def _grammar(self, field: str, source: str) -> str:
        return compiled_grammar(self.tokenizer, field, source)

    def check(self, field: str, source: str) -> None:
        self._grammar(field, source)

    def matcher(self, field: str, source: str) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(_llguidance().LLMatcher(self.tokenizer, self._grammar(field, source)))

    @property
    def executor(self) -> Any:
        """llguidance's thread pool: a step's matchers advance and fill their masks in parallel."""
        if self._executor is None:
            self._executor = _llguidance().LLExecutor()
        return self._executor

    def accept(self, tokens: list[tuple[Any, int]]) -> list[bool]:
        # one native call for the step on llguidance's pool, not a Python call per row (as fast
        # where the pool has one thread; many-core hosts gain)
        return self.executor.consume_token_par([(m.matcher, token) for m, token in tokens])

    def fill(self, rows: list[tuple[Any, int]], bitmask: Any) -> None:
        _llguidance().torch.fill_next_token_bitmask_par(self.executor, [(m.matcher, row) for m, row in rows], bitmask)

    def draft_prefix(self, matcher: Any, tokens: list[int]) -> int:
        m = matcher.matcher
        allowed = m.validate_tokens(tokens)  # moves nothing
        kept = 0
        for token in tokens[:allowed]:
            m.consume_token(token)
            # the grammar is complete after it: left to the sample, so that a matcher fed a
            # step's emitted tokens can be done only after the last of them
            if m.is_stopped():
                m.rollback(kept + 1)
                return kept
            kept += 1
        m.rollback(kept)
        return kept

    def fill_drafts(self, rows: list[tuple[Any, int, list[int]]], bitmask: Any) -> None:
        # llguidance walks each matcher through its drafts, filling a row per state, and rolls it back
        _llguidance().torch.fill_next_token_bitmask_par_with_draft_tokens(
            self.executor, [(m.matcher, row, drafts) for m, row, drafts in rows], bitmask)


class LLGuidanceMatcher:
    """One request's place in its llguidance grammar."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing but EOS may follow."""
        return bool(self.matcher.is_stopped())

    @property
    def error(self) -> str:
        return self.matcher.get_error() or ""
