"""Per-request sampling parameters (the public `minisgl.SamplingParams`), declared once.

Each field's name, type and default are SamplingParams'; its bounds, and what the HTTP front
doors call it, sit beside it as a `Rule`. `validate` checks every door's values against
those rules, and the doors' msgspec body types are built from them (`door_struct`, read
back with `door_params`), so a new parameter is one field here."""

from __future__ import annotations

import functools
import operator
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from .frontend.errors import invalid
from .grammar import GRAMMAR_FIELDS

SEED_RANGE = (-(1 << 63), 1 << 64)  # what msgpack carries; derived seeds wrap modulo 2**64
# the HTTP doors: /v1/completions, /v1/chat/completions, /generate, /v1/responses
DOORS = ("completions", "chat", "generate", "responses")
# what an embedding request pools of its prompt's final hidden states (vLLM's pooler names);
# such a request samples nothing
Pooling = Literal["last", "mean"]
OPENAI = ("completions", "chat")


@dataclass(frozen=True)
class Rule:
    """How one SamplingParams field is checked, and how the HTTP doors take it."""

    ge: float | None = None  # bounds: a value outside them (or NaN) is refused
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""  # the bounds in words, where the plain wording would mislead
    doc: str = ""  # published in the OpenAPI schema
    doors: tuple[str, ...] = DOORS  # the HTTP doors that take the field
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # a door's names for it (the first given wins)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # a door's own default (otherwise unset)

    def fault(self, value: Any) -> str | None:
        """Why `value` is out of bounds, or None (an unset value is never out)."""
        if value is None or ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                             and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)):
            return None
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else ""
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else ""
        if self.why or (low and high):
            return self.why or f"must be in {low}, {high}"
        return f"must be {'>=' if low[0] == '[' else '>'} {low[1:]}" if low else \
            f"must be {'<=' if high[-1] == ']' else '<'} {high[:-1]}"


class SamplingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    max_new_tokens: Annotated[int | None, Rule(
        ge=1, doc="unset: what fits the context, at most the server's default",
        names={"completions": ("max_tokens",), "chat": ("max_completion_tokens", "max_tokens"),
               "responses": ("max_output_tokens",)},
        defaults={"completions": 16})] = None
    min_new_tokens: Annotated[int, Rule(ge=0, names={d: ("min_tokens",) for d in OPENAI})] = 0
    temperature: Annotated[float, Rule(ge=0.0, le=100.0, doc="0 = greedy")] = 1.0
    top_p: Annotated[float, Rule(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Rule(ge=-1, why="must be -1, 0 (off) or a positive integer", doc="0 or -1 = off")] = 0
    min_p: Annotated[float, Rule(ge=0.0, le=1.0)] = 0.0
    repetition_penalty: Annotated[float, Rule(gt=0.0, le=10.0)] = 1.0
    frequency_penalty: Annotated[float, Rule(ge=-2.0, le=2.0)] = 0.0
    presence_penalty: Annotated[float, Rule(ge=-2.0, le=2.0)] = 0.0
    stop: Annotated[str | list[str], Rule(doc="a stop string or a list of at most 16")] = []  # a list once built
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    seed: Annotated[int | None, Rule(ge=SEED_RANGE[0], lt=SEED_RANGE[1], why="must be in [-2**63, 2**64)")] = None
    n: Annotated[int, Rule(ge=1, le=128)] = 1
    # logprobs: chat's flag; /v1/completions says `logprobs: k` for both (its route sets the flag)
    logprobs: Annotated[bool, Rule(doors=("chat",))] = False
    top_logprobs: Annotated[int, Rule(ge=0, le=20, doors=OPENAI, names={"completions": ("logprobs",)})] = 0
    skip_special_tokens: bool = True
    logit_bias: Annotated[dict[int, float], Rule(doc="token id -> a bias in [-100, 100] added to its logit")] = {}
    # structured outputs (sglang's names): at most one; see minisgl.grammar
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]

    def validate(self, names: Mapping[str, str] | None = None, vocab_size: int | None = None) -> SamplingParams:
        """Raise RequestError (a ValueError) naming the first out-of-range field, by the
        name the caller knows it by (`names` maps ours to a front door's). With `vocab_size`,
        token ids must be in the vocabulary."""

        def bad(field: str, why: str) -> None:
            name = (names or {}).get(field, field)
            value = repr(getattr(self, field))
            if len(value) > 200:
                value = value[:200] + "..."
            raise invalid(f"invalid sampling parameter '{name}' = {value}: {why}", param=name)

        def in_vocabulary(field: str, ids: Iterable[int]) -> None:
            if any(t < 0 for t in ids):
                bad(field, "must be non-negative token ids")
            outside = next((t for t in ids if vocab_size is not None and t >= vocab_size), None)
            if outside is not None:
                name = (names or {}).get(field, field)
                raise invalid(f"'{name}' holds token id {outside!r}, outside this tokenizer's vocabulary "
                              f"[0, {vocab_size})", name)

        for name, (_, rule) in FIELDS.items():
            why = rule.fault(getattr(self, name))
            if why is not None:
                bad(name, why)
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            bad("min_new_tokens", "must be <= max_new_tokens")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        if len(self.stop) > 16:
            bad("stop", "at most 16 stop strings")
        in_vocabulary("stop_token_ids", self.stop_token_ids)
        in_vocabulary("logit_bias", self.logit_bias)
        if any(not -100.0 <= b <= 100.0 for b in self.logit_bias.values()):
            bad("logit_bias", "biases must be in [-100, 100]")
        constraints = [f for f in GRAMMAR_FIELDS if getattr(self, f) is not None]
        if len(constraints) > 1:
            bad(constraints[1], f"give at most one of {', '.join(GRAMMAR_FIELDS[:-1])} and {GRAMMAR_FIELDS[-1]} "
                                f"(also got {constraints[0]})")
        return self

    def stop_ids(self, eos_token_ids: Iterable[int]) -> frozenset[int]:
        """The tokens that end a sequence: stop_token_ids, and EOS unless ignore_eos."""
        return frozenset(self.stop_token_ids) | (frozenset() if self.ignore_eos else frozenset(eos_token_ids))

    def for_sample(self, index: int, max_new_tokens: int) -> SamplingParams:
        """Sample `index` of an n-way request: n = 1, its own seed (seed + index, vLLM's
        convention, so the set is reproducible and the samples differ)."""
        seed = None if self.seed is None else (self.seed + index) % SEED_RANGE[1]
        return msgspec.structs.replace(self, n=1, seed=seed, max_new_tokens=max_new_tokens)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def _declared() -> dict[str, tuple[Any, Rule]]:
    """Each field's type (without its Rule) and Rule (a plain one where none is declared)."""
    hints = typing.get_type_hints(SamplingParams, include_extras=True)
    out = {}
    for name in SamplingParams.__struct_fields__:
        hint = hints[name]
        rules = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Rule)]
        out[name] = (typing.get_args(hint)[0] if rules else hint, rules[0] if rules else Rule())
    return out


FIELDS = _declared()


def _optional(tp: Any, rule: Rule, default: Any) -> Any:
    """`tp` without None, with the rule's bounds, doc and default for the schema (bounds not
    enforced there: `validate` says what is wrong, by the door's name), then `| None`: unset."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if isinstance(tp, types.UnionType) else [tp]
    base = functools.reduce(operator.or_, args)
    doc = "; ".join(filter(None, [rule.doc, f"unset: {default!r}" if default not in (None, [], {}) else ""]))
    bounds = {"minimum": rule.ge, "exclusive_minimum": rule.gt, "maximum": rule.le, "exclusive_maximum": rule.lt}
    # "extra": where Litestar's OpenAPI generation takes further schema keys (by its names) from
    schema = {"description": doc or None, "extra": {k: v for k, v in bounds.items() if v is not None} or None}
    if not any(schema.values()):
        return base | None
    return Annotated[base, msgspec.Meta(extra_json_schema=schema)] | None


def door_struct(name: str, door: str, *, only: Iterable[str] | None = None) -> type[msgspec.Struct]:
    """The msgspec body type of `door`'s sampling fields (those in `only`, if given), by the
    door's names, each optional: unset means the door's default, else SamplingParams'."""
    keep = set(FIELDS if only is None else only)
    defaults = {f.name: f.default_factory() if f.default is msgspec.NODEFAULT else f.default
                for f in msgspec.structs.fields(SamplingParams)}
    fields = [(alias, _optional(tp, rule, defaults[field_name]), rule.defaults.get(door))
              for field_name, (tp, rule) in FIELDS.items() if field_name in keep and door in rule.doors
              for alias in rule.names.get(door, (field_name,))]
    return msgspec.defstruct(name, fields, kw_only=True, bases=(msgspec.Struct,))


def door_params(door: str, *bodies: Any, **given: Any) -> tuple[SamplingParams, dict[str, str]]:
    """The SamplingParams that `door`'s bodies hold (the first body that sets a field wins),
    with `given` on top, and the name the client used for each field (for errors)."""
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for field_name, (_, rule) in FIELDS.items():
        if door not in rule.doors:
            continue
        aliases = rule.names.get(door, (field_name,))
        names[field_name] = aliases[0]
        for body in bodies:
            alias = next((a for a in aliases if getattr(body, a, None) is not None), None)
            if alias is not None:
                values[field_name], names[field_name] = getattr(body, alias), alias
                break
    values.update((k, v) for k, v in given.items() if v is not None)
    return SamplingParams(**values), names
