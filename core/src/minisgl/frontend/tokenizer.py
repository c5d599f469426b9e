"""Prompts to token ids and token ids back to text, with the request layer's input rules.

`Tokenizer` wraps the model's transformers tokenizer. `encode_prompts` and `encode_chat`
are the rules every front door shares: what a prompt may be (text, token ids, a batch of
either), which chat roles exist, that token ids are inside the vocabulary, that nothing is
empty. They are plain functions of a Tokenizer so that tokenizer worker processes
(`--num-tokenizer`) run exactly the same code."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..engine.messages import ImageInput
from ..models.resolve import is_vision_model
from .detokenizer import IncrementalDetokenizer
from .errors import ErrorKind, RequestError, invalid
from .images import ImageRules, check_request_pixels, image_bytes
from .vision import VisionProcessor

log = logging.getLogger("minisgl.frontend")

# Used only when a model ships no chat template (base models); logged once at load.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_PROMPTS = 1024  # prompts in one batched request; each becomes at least one engine request
MAX_IMAGES = 16  # images in one chat request
IMAGE_DETAILS = ("auto", "low", "high")  # OpenAI's `detail`; accepted, the processor decides the resolution


class Tokenizer:
    def __init__(self, model_path: str, trust_remote_code: bool = False, token_cache_size: int = 32) -> None:
        from transformers import AutoProcessor, AutoTokenizer

        # a vision-language model: its processor holds the tokenizer (and often the chat template)
        self.vision: VisionProcessor | None = None
        self._templates: Any = None
        if is_vision_model(model_path):
            processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            self.vision = VisionProcessor(processor)
            self.tokenizer = processor.tokenizer
            if getattr(processor, "chat_template", None):
                self._templates = processor
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self._templates = self._templates or self.tokenizer
        self.vocab_size = len(self.tokenizer)
        # the most characters one token can stand for: a text longer than context x this
        # cannot fit, which is known before paying for its tokenization
        self.max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.has_chat_template = bool(getattr(self._templates, "chat_template", None))
        if not self.has_chat_template:
            log.warning("tokenizer of %s has no chat template; chat uses a plain ChatML template", model_path)
        # TOKEN_CACHE_SIZE: the decode cache of single tokens' text (logprobs name every token)
        self.token_text = functools.lru_cache(maxsize=token_cache_size or None)(self._token_text)

    @property
    def chat_template_text(self) -> str:
        """The chat template's source (all of them, where a model names several)."""
        template = getattr(self._templates, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
        return "\n".join(template.values()) if isinstance(template, dict) else str(template)

    @functools.cached_property
    def renders_tools(self) -> bool:
        """Whether the chat template writes a request's `tools` into the prompt."""
        probe = [{"type": "function", "function": {"name": "minisgl_probe_tool", "parameters": {"type": "object"}}}]
        try:
            return "minisgl_probe_tool" in self.render_chat([{"role": "user", "content": "hi"}], tools=probe)
        except ValueError:
            return False

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def render_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None,
                    tools: list[dict[str, Any]] | None = None) -> str:
        try:
            return self._templates.apply_chat_template(
                messages,
                tools=tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                chat_template=None if self.has_chat_template else FALLBACK_CHAT_TEMPLATE,
                **(template_kwargs or {}),
            )
        except Exception as exc:  # jinja errors (e.g. a template's raise_exception) are the request's fault
            raise invalid(f"chat template failed: {type(exc).__name__}: {exc}", param="messages") from None

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def detokenizer(self, *, skip_special_tokens: bool = True, stop: Sequence[str] = ()) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=skip_special_tokens, stop=tuple(stop))


def check_token_ids(tokenizer: Tokenizer, ids: Sequence[Any], param: str) -> list[int]:
    vocab = tokenizer.vocab_size
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            raise invalid(f"'{param}' holds token id {t!r}, outside this tokenizer's vocabulary [0, {vocab})", param)
    return list(ids)


def prompt_items(prompt: str | Sequence[Any]) -> list[Any]:
    """A prompt is a string, token ids, or a batch of either: the batch."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [prompt]
    return list(prompt)


def check_length(tokenizer: Tokenizer, chars: int, max_context_len: int | None, param: str) -> None:
    """Refuse, before tokenizing it, a text too long to fit the context whatever its tokens
    (twice the bound, so normalizers that shorten text can never make it wrong)."""
    if max_context_len is None:
        return
    limit = 2 * max_context_len * tokenizer.max_token_chars
    if chars > limit:
        raise RequestError(ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                           f"'{param}' has {chars} characters: more than can fit this model's maximum context length "
                           f"of {max_context_len} tokens (at most {limit} characters)", param)


def encode_prompts(tokenizer: Tokenizer, prompt: str | Sequence[Any], param: str = "prompt",
                   max_context_len: int | None = None) -> list[list[int]]:
    """One token-id list per prompt of the batch."""
    items = prompt_items(prompt)
    if not items:
        raise invalid(f"'{param}' is empty", param)
    if len(items) > MAX_PROMPTS:
        raise invalid(f"'{param}' holds {len(items)} prompts; at most {MAX_PROMPTS} per request", param)
    out = []
    for item in items:
        if isinstance(item, str):
            check_length(tokenizer, len(item), max_context_len, param)
            ids = tokenizer.encode(item)
        elif isinstance(item, Sequence):
            ids = check_token_ids(tokenizer, item, param)
        else:
            raise invalid(f"'{param}' must be a string, a list of strings, a list of token ids or a list of "
                          "token-id lists", param)
        if not ids:
            raise invalid(f"'{param}' is empty", param)
        out.append(ids)
    return out


def tokenize_text(tokenizer: Tokenizer, text: str, add_special_tokens: bool = True,
                  max_context_len: int | None = None) -> list[int]:
    """One text's token ids, as a generation would see them (POST /tokenize)."""
    check_length(tokenizer, len(text), max_context_len, "prompt")
    return tokenizer.encode(text, add_special_tokens)


def detokenize_ids(tokenizer: Tokenizer, ids: Sequence[Any]) -> str:
    """The text of token ids, special tokens included, so that tokenize and detokenize
    round-trip (POST /detokenize)."""
    return tokenizer.decode(check_token_ids(tokenizer, ids, "tokens"), skip_special_tokens=False)


class ChatPrompt(NamedTuple):
    ids: list[int]
    images: list[ImageInput]  # in prompt order; empty for text


def _content(message: dict[str, Any], index: int, images: list[tuple[str, str]], vision: bool) -> Any:
    """The message's content as the chat template takes it: a string, or (with images) the
    parts [{"type": "text", ...}, {"type": "image"}]. Image URLs are collected in order."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"messages[{index}].content[{j}]"
        if kind == "image_url":
            if not vision:
                raise invalid(f"{where} is an image_url part; this model takes text only", "messages")
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url:
                raise invalid(f"{where}.image_url must be {{'url': ...}} with a non-empty URL", "messages")
            if isinstance(spec, dict) and (spec.get("detail") or "auto") not in IMAGE_DETAILS:
                raise invalid(f"{where}.image_url.detail is {spec.get('detail')!r}; expected one of "
                              f"{', '.join(IMAGE_DETAILS)}", "messages")
            images.append((url, f"{where}.image_url"))
            parts.append({"type": "image"})
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise invalid(f"{where} must be {{'type': 'text', 'text': ...}}"
                          + (" or {'type': 'image_url', 'image_url': {'url': ...}}" if vision else ""), "messages")
    if all(p["type"] == "text" for p in parts):  # templates of text models expect a string
        return "".join(p["text"] for p in parts)
    return parts


def has_image_parts(messages: Sequence[dict[str, Any]]) -> bool:
    """Whether a conversation holds image_url parts (it goes to a model that takes images)."""
    return any(isinstance(m, dict) and isinstance(m.get("content"), list)
               and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"]) for m in messages)


def _text_of(content: Any) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def chat_messages(messages: Sequence[dict[str, Any]], vision: bool = False) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """OpenAI chat messages as the chat template takes them, and the image URLs they hold
    (url, the part's name for errors) in order."""
    if not messages:
        raise invalid("'messages' must hold at least one message", "messages")
    out = []
    images: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise invalid(f"messages[{i}].role is {role!r}; expected one of {', '.join(sorted(CHAT_ROLES))}", "messages")
        if m.get("content") is None and role != "assistant":
            raise invalid(f"messages[{i}].content is missing", "messages")
        entry = {"role": role, "content": _content(m, i, images, vision)}
        entry.update({k: m[k] for k in ("name", "reasoning_content", "tool_call_id") if m.get(k)})
        if m.get("tool_calls"):
            entry["tool_calls"] = [_template_call(call, f"messages[{i}].tool_calls[{j}]")
                                   for j, call in enumerate(m["tool_calls"])]
        out.append(entry)
    if len(images) > MAX_IMAGES:
        raise invalid(f"'messages' holds {len(images)} images; at most {MAX_IMAGES} per request", "messages")
    return out, images


def _template_call(call: Any, where: str) -> dict[str, Any]:
    """An assistant's earlier call as chat templates take it: its arguments as an object,
    not the JSON text OpenAI clients send back."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise invalid(f"{where} must be {{'id': ..., 'type': 'function', 'function': {{'name': ..., "
                      "'arguments': ...}}}}", "messages")
    arguments = fn.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            raise invalid(f"{where}.function.arguments is not JSON: {arguments[:100]!r}", "messages") from None
    return {**call, "function": {**fn, "arguments": arguments}}


def _placeholders_as_text(conversation: list[dict[str, Any]], placeholder: str) -> list[dict[str, Any]]:
    """For a chat template that drops image parts: each image becomes `placeholder` text."""
    def text(content: Any) -> Any:
        if isinstance(content, str):
            return content
        return "".join(p["text"] if p["type"] == "text" else placeholder + "\n" for p in content)
    return [{**m, "content": text(m["content"])} for m in conversation]


def encode_chat(tokenizer: Tokenizer, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None,
                max_context_len: int | None = None, image_rules: ImageRules | None = None,
                tools: list[dict[str, Any]] | None = None, tools_writer: Any = None) -> ChatPrompt:
    """The chat prompt's token ids and images. `tools` go to the chat template, or with
    `tools_writer` (a template that ignores them: ToolUse.writer) into the messages."""
    vision = tokenizer.vision
    conversation, urls = chat_messages(messages, vision=vision is not None)
    if tools_writer is not None and tools:
        conversation, tools = tools_writer.write_tools(conversation, tools), None
    check_length(tokenizer, sum(len(_text_of(m["content"])) for m in conversation), max_context_len, "messages")
    rules = image_rules or ImageRules()
    encoded = [(image_bytes(url, rules, param), param) for url, param in urls]  # bad URLs fail first
    check_request_pixels(encoded, rules)
    kwargs = dict(add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                  template_kwargs=template_kwargs, tools=tools)
    text = tokenizer.render_chat(conversation, **kwargs)
    if vision is not None and encoded and vision.image_token not in text:
        # the template ignores image parts: VLM_IMAGE_TOKEN marks each image in the text
        text = tokenizer.render_chat(_placeholders_as_text(conversation, rules.placeholder), **kwargs)
        text = text.replace(rules.placeholder, vision.image_token)
    # the template already wrote any BOS it wants
    ids = list(tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise invalid("the chat template rendered an empty prompt", "messages")
    if vision is None or not encoded:
        return ChatPrompt(ids, [])
    return ChatPrompt(*vision.splice(ids, encoded, rules))
