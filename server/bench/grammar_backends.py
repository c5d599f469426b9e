"""Which grammar library to build structured outputs on: llguidance or xgrammar, measured.

For one JSON schema and a tokenizer, per library: the cold compile time, the time to fill
the token masks of a batch of matchers for one decode step (each matcher walks a valid
document token by token, as a request under the grammar would), and whether every token of
the valid documents is allowed and a token that breaks the JSON is refused.

    python server/bench/grammar_backends.py --tokenizer smollm2-135m --batch 64

Needs `pip install llguidance xgrammar` (xgrammar pulls triton on Linux).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 5},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "email", "tags", "address"],
    "additionalProperties": False,
}


def documents(n: int) -> list[str]:
    names = ["Ada", "Grace Hopper", "Linus", "Barbara Liskov", "Ken"]
    return [json.dumps({"name": names[i % 5], "age": 20 + i, "email": f"user{'x' * (i % 4)}@mail.com".replace("0", ""),
                        "tags": ["red", "blue"][: i % 3], "address": {"city": "Paris", "zip": f"{75000 + i}"}})
            for i in range(n)]


class LLGuidance:
    name = "llguidance"

    def __init__(self, hf_tok) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg, self.lt = llguidance, llguidance.torch
        self.tok = llguidance.hf.from_tokenizer(hf_tok)
        self.vocab = self.tok.vocab_size

    def compile(self, schema: str):
        return self.llg.LLMatcher.grammar_from_json_schema(schema)

    def matcher(self, grammar):
        m = self.llg.LLMatcher(self.tok, grammar)
        assert not m.is_error(), m.get_error()
        return m

    def bitmask(self, rows: int):
        return self.lt.allocate_token_bitmask(rows, self.vocab)

    def fill(self, m, mask, row: int) -> None:
        self.lt.fill_next_token_bitmask(m, mask, row)

    def accept(self, m, token: int) -> bool:
        return m.consume_token(token)


class XGrammar:
    name = "xgrammar"

    def __init__(self, hf_tok) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(hf_tok, vocab_size=len(hf_tok))
        self.compiler = xgr.GrammarCompiler(self.info, cache_enabled=False)
        self.vocab = self.info.vocab_size

    def compile(self, schema: str):
        return self.compiler.compile_json_schema(schema)

    def matcher(self, grammar):
        return self.xgr.GrammarMatcher(grammar)

    def bitmask(self, rows: int):
        return self.xgr.allocate_token_bitmask(rows, self.vocab)

    def fill(self, m, mask, row: int) -> None:
        m.fill_next_token_bitmask(mask, row)

    def accept(self, m, token: int) -> bool:
        return m.accept_token(token)


def allowed(mask, row: int, token: int) -> bool:
    return bool((int(mask[row, token // 32]) >> (token % 32)) & 1)


def measure(lib, hf_tok, batch: int) -> dict:
    schema = json.dumps(SCHEMA)
    t0 = time.perf_counter()
    grammar = lib.compile(schema)
    compile_ms = (time.perf_counter() - t0) * 1000
    docs = [hf_tok(d, add_special_tokens=False).input_ids for d in documents(batch)]
    matchers = [lib.matcher(grammar) for _ in docs]
    mask = lib.bitmask(batch)
    steps, refused_valid = [], 0
    for step in range(max(map(len, docs))):
        live = [i for i, d in enumerate(docs) if step < len(d)]
        t0 = time.perf_counter()
        for i in live:
            lib.fill(matchers[i], mask, i)
        steps.append((time.perf_counter() - t0) * 1000)
        for i in live:
            token = docs[i][step]
            refused_valid += not allowed(mask, i, token)
            lib.accept(matchers[i], token)
    # after `{"name": ` only a string may follow: a digit must be masked out
    probe = lib.matcher(grammar)
    for t in hf_tok('{"name": ', add_special_tokens=False).input_ids:
        lib.accept(probe, t)
    lib.fill(probe, mask, 0)
    digit = hf_tok("7", add_special_tokens=False).input_ids[0]
    return {"library": lib.name, "compile_ms": compile_ms, "step_ms_p50": statistics.median(steps),
            "step_ms_max": max(steps), "valid_tokens_refused": refused_valid,
            "refuses_a_digit_for_a_string": not allowed(mask, 0, digit)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from minisgl.models import resolve_model

    hf_tok = AutoTokenizer.from_pretrained(resolve_model(args.tokenizer).path)
    for cls in (LLGuidance, XGrammar):
        print(json.dumps(measure(cls(hf_tok), hf_tok, args.batch)), flush=True)


if __name__ == "__main__":
    main()
