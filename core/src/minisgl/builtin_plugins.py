"""The core's own plugin, registered through the `minisgl` entry-point group like any
third party's: the defaults a core-only install needs to run (the radix and naive caches,
the fcfs queue policy, round-robin dispatch, the built-in control commands, reasoning
parsers and tool-call formats, the llguidance grammar backend, the n-gram proposer). Other
policies ship in the `minisgl-schedulers` distribution."""

from .hookspecs import hookimpl
from .specs import (
    CacheSpec,
    ControlCommandSpec,
    DispatchPolicySpec,
    GrammarBackendSpec,
    ProposerSpec,
    QueuePolicySpec,
    ReasoningParserSpec,
    ToolCallParserSpec,
)


@hookimpl
def minisgl_register_caches(register):
    register(CacheSpec(
        name="radix",
        description="radix tree over token ids: shared prefixes, lock refs, LRU eviction",
        factory="minisgl.cache.radix:RadixCache",
    ))
    register(CacheSpec(
        name="naive",
        description="no prefix reuse: every request prefills its whole prompt",
        factory="minisgl.cache.naive:NaiveCache",
    ))


@hookimpl
def minisgl_register_schedulers(register):
    register(QueuePolicySpec(
        name="fcfs",
        description="first come, first served",
        factory="minisgl.engine.queue_policy:FCFS",
    ))
    register(DispatchPolicySpec(
        name="rr",
        description="round robin over healthy replicas",
        factory="minisgl.dispatch:RoundRobin",
    ))


@hookimpl
def minisgl_register_control_commands(register):
    for name, description in [
        ("metrics", "engine and server metrics"),
        ("warm", "insert prefixes into the prefix cache: {prefixes: [str]}"),
        ("flush_cache", "drop cached prefixes: {tier: device|host|disk|all}, omitted: device and host"),
        ("cache_stats", "each cache tier's pages, bytes, hit tokens and hit rate, per replica"),
        ("plugins", "installed plugins and what they registered"),
        ("set_scheduler", "switch the dispatch policy: {name: str}"),
        ("drain", "stop admitting requests, finish the running ones; /health says draining: {timeout: s}"),
        ("resume", "undo drain: admit requests again"),
    ]:
        register(ControlCommandSpec(
            name=name, description=description, factory=f"minisgl.control.commands:{name}"
        ))


@hookimpl
def minisgl_register_parsers(register):
    register(ReasoningParserSpec(
        name="qwen3",
        description="<think>...</think> when the model opens it (Qwen3, QwQ); no tag: all content",
        factory="minisgl.frontend.reasoning:qwen3",
    ))
    register(ReasoningParserSpec(
        name="deepseek-r1",
        description="reasoning until </think>: the template opened it (DeepSeek-R1, Qwen3 thinking-only)",
        factory="minisgl.frontend.reasoning:deepseek_r1",
    ))
    for name, fmt, description in [
        ("hermes", "HERMES", '<tool_call>{"name": ..., "arguments": ...}</tool_call> (Hermes 2/3)'),
        ("qwen", "HERMES", "Qwen 2.5 and Qwen 3: Hermes' tags"),
        ("llama3", "LLAMA3", '{"name": ..., "parameters": ...} opening the answer, joined by ; (Llama 3.1-3.3)'),
    ]:
        register(ToolCallParserSpec(name=name, description=description,
                                    factory=f"minisgl.frontend.tool_calls:{fmt}"))


@hookimpl
def minisgl_register_grammar_backends(register):
    register(GrammarBackendSpec(name="llguidance", description="llguidance 1.9: JSON schema, regex, Lark/GBNF; "
                                "lazy compile, parallel mask fill", factory="minisgl.grammar:LLGuidance"))


@hookimpl
def minisgl_register_proposers(register):
    register(ProposerSpec(
        name="ngram",
        description="prompt lookup: drafts what followed the latest earlier occurrence of the request's last tokens",
        factory="minisgl.engine.speculative:NgramProposer",
    ))
    register(ProposerSpec(
        name="standalone",
        description="a smaller draft model with the target's tokenizer (--speculative-draft-model-path), "
                    "run by the same backend with its own KV",
        factory="minisgl.engine.draft_model:StandaloneProposer",
    ))
