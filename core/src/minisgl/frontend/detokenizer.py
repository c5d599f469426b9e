"""Streaming detokenization for frontends (LLM, the server): token ids in, text deltas out.

Two things make it more than `tokenizer.decode` per token:
- multi-byte UTF-8: one character may span several byte-level tokens; decoding them one
  at a time gives U+FFFD. New text is emitted only once it no longer ends in an incomplete
  character, decoded with the text before it so that merges and leading spaces come out as
  in the full text: by the tokenizers library's DecodeStream (several times faster,
  BENCHMARKS.md) when the tokenizer has a Rust backend and no clean-up, else by re-decoding
  a short window of already-emitted tokens;
- stop strings may straddle tokens: any tail of the text that could be the start of a
  stop string is held back until it is disambiguated, so no stop text ever reaches the
  caller. On a match the text is cut right before the stop string and `push` reports
  `stop_hit`; the frontend then calls `Engine.abort_request(rid, "stop")`.

`finish()` flushes what was held back (a partial stop string that never completed, or a
trailing incomplete character, which decodes to U+FFFD as transformers would).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# how many already-emitted tokens to re-decode as context (vLLM uses the same idea)
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self._prefix_offset = 0  # start of the context window
        self._read_offset = 0  # tokens before this are already turned into text
        self._held = ""  # decoded text not yet emitted (could start a stop string)
        self.text = ""  # everything emitted so far
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text
        self._backend = getattr(tokenizer, "_tokenizer", None)
        self._stream: Any = None
        if isinstance(self._backend, Tokenizer) and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
            self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _new_text(self, added: int) -> str:
        """Text added by tokens after the read offset, or "" while a character is incomplete."""
        if self._stream is not None:
            text = ""
            for i in range(len(self.token_ids) - added, len(self.token_ids)):
                piece = self._stream.step(self._backend, self.token_ids[i])
                if piece is not None:
                    text += piece
                    self._read_offset = i + 1
            self._prefix_offset = max(0, self._read_offset - _CONTEXT_TOKENS)
            return text
        prefix = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.token_ids[self._prefix_offset :])
        if full.endswith("\ufffd") or len(full) < len(prefix):
            return ""
        self._prefix_offset = max(0, len(self.token_ids) - _CONTEXT_TOKENS)
        self._read_offset = len(self.token_ids)
        return full[len(prefix) :]

    def push(self, token_ids: Iterable[int]) -> tuple[str, bool]:
        """Add tokens; returns (text safe to show now, whether a stop string matched)."""
        if self.stopped:
            return "", True
        before = len(self.token_ids)
        self.token_ids.extend(int(t) for t in token_ids)
        self._held += self._new_text(len(self.token_ids) - before)
        if self.stop:
            cut, self.matched = min(((i, s) for s, i in ((s, self._held.find(s)) for s in self.stop) if i >= 0),
                                    default=(-1, None))
            if cut >= 0:
                delta, self._held, self.stopped = self._held[:cut], "", True
                self.text += delta
                return delta, True
            keep = self._stop_prefix_len(self._held)
        else:
            keep = 0
        delta = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        self.text += delta
        return delta, False

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def finish(self) -> str:
        """Flush held-back text once no more tokens will come."""
        if self.stopped:
            return ""
        tail = self._held
        rest = self.token_ids[self._read_offset :]
        if rest:
            prefix = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
            tail += self._decode(self.token_ids[self._prefix_offset :])[len(prefix) :]
            self._read_offset = len(self.token_ids)
        self._held = ""
        self.text += tail
        return tail
