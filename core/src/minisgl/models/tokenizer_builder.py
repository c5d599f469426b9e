"""Byte-level BPE tokenizers built offline, in milliseconds, with a ChatML chat template.

Used by the architecture presets (a vocabulary exactly as large as the real model's, so
every id the random model can emit decodes) and by `minisgl.testing.make_tiny_model`.
Byte-level means any text round-trips; training on a small English corpus means common
words are single tokens, like with a real tokenizer. Ids that the corpus cannot fill become
inert filler tokens (`<filler_N>`): decodable, never produced by encoding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .english_corpus import ENGLISH_CORPUS

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

# ChatML, the format Qwen and SmolLM2 use. Accepts OpenAI-style content lists (text parts),
# and tools the way Qwen 2.5 writes them: the functions listed in the system turn, an
# assistant's calls as <tool_call> JSON, tool results as <tool_response> in a user turn.
CHATML_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content -%}{%- for part in content -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set skip_system = tools and messages and messages[0]['role'] == 'system' -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' + (text(messages[0]['content']) if skip_system else 'You are a helpful assistant.') -}}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '"
    " + '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": '"
    " + '<args-json-object>}\\n</tool_call><|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and skip_system -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + text(message['content']) + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + text(message['content']) -}}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": '"
    " + (call['function']['arguments'] | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Ordered: with no pinned ids they take the first ids after the trained vocabulary.
DEFAULT_SPECIAL_TOKENS: dict[str, int | None] = {END_OF_TEXT: None, IM_START: None, IM_END: None}

DEFAULT_TRAINED_VOCAB = 1024


def build_byte_level_tokenizer(
    vocab_size: int | None = None,
    special_tokens: Mapping[str, int | None] = DEFAULT_SPECIAL_TOKENS,
    trained_vocab_size: int = DEFAULT_TRAINED_VOCAB,
):
    """Train a byte-level BPE on the built-in corpus and lay out a vocabulary.

    `special_tokens` maps each special token to a fixed id (to mirror a real model's ids,
    e.g. Qwen's <|im_end|> = 151645) or to None (next free id after the trained tokens).
    With `vocab_size`, the vocabulary is padded with filler tokens to exactly that size.
    Returns a `tokenizers.Tokenizer`. Deterministic: same arguments, same tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    pinned = {tok: i for tok, i in special_tokens.items() if i is not None}
    if vocab_size is not None:
        bad = {tok: i for tok, i in pinned.items() if not 0 <= i < vocab_size}
        if bad:
            raise ValueError(f"special token ids {bad} fall outside vocab_size={vocab_size}")
        # leave room for the specials that are not pinned, and for the 256 byte symbols
        budget = vocab_size - len(special_tokens)
        if budget < 256:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for a byte-level tokenizer (min {256 + len(special_tokens)})"
            )
        trained_vocab_size = min(trained_vocab_size, budget)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=trained_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(ENGLISH_CORPUS.splitlines(keepends=True), trainer)

    # Rewrite the vocabulary in the serialized form: trained tokens keep ids 0..n-1 (pinned
    # specials may not collide with them), then specials and fillers fill the rest.
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    trained = len(vocab)
    clash = {t: i for t, i in pinned.items() if i < trained}
    if clash:
        raise ValueError(f"special token ids {clash} collide with the {trained} trained tokens")
    taken = set(pinned.values())
    next_id = trained
    ids: dict[str, int] = {}
    for token, fixed in special_tokens.items():
        if fixed is None:
            while next_id in taken:
                next_id += 1
            fixed = next_id
            taken.add(fixed)
        ids[token] = fixed
    vocab.update(ids)
    total = vocab_size if vocab_size is not None else max(taken) + 1
    for i in range(trained, total):
        if i not in taken:
            vocab[f"<filler_{i}>"] = i
    spec["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in sorted(ids.items(), key=lambda kv: kv[1])
    ]
    return Tokenizer.from_str(json.dumps(spec))


def save_hf_tokenizer(
    tokenizer,
    out_dir: str | Path,
    *,
    bos_token: str | None,
    eos_token: str,
    pad_token: str | None,
    chat_template: str = CHATML_TEMPLATE,
) -> None:
    """Save a `tokenizers.Tokenizer` as a transformers tokenizer (tokenizer.json + config)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        clean_up_tokenization_spaces=False,  # byte-level: decode must return the exact text
        model_max_length=1 << 30,
    )
    hf.chat_template = chat_template
    hf.save_pretrained(str(out_dir))
