"""The server's tokenizer: prompts and chat messages to token ids, token ids back to text.

Runs in the server process (the engine deals only in token ids). Chat templates come from
the model's tokenizer; `chat_template_kwargs` reach the template (e.g. enable_thinking)."""

from __future__ import annotations

import logging
from typing import Any

from minisgl.engine.detokenizer import IncrementalDetokenizer

log = logging.getLogger("minisgl.server")

# Used only when a model ships no chat template (base models); logged once at load.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ChatTemplateError(ValueError):
    pass


class TokenizerService:
    def __init__(self, model_path: str, trust_remote_code: bool = False) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        if not self.has_chat_template:
            log.warning("tokenizer of %s has no chat template; chat uses a plain ChatML template", model_path)
        self._token_text: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        kwargs = dict(template_kwargs or {})
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                chat_template=None if self.has_chat_template else FALLBACK_CHAT_TEMPLATE,
                **kwargs,
            )
        except Exception as exc:  # jinja errors (e.g. a template's raise_exception) are the request's fault
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from None

    def encode_chat(self, text: str) -> list[int]:
        # the template already wrote any BOS it wants
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """A token's text on its own (for logprobs), cached."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text

    def detokenizer(self, *, skip_special_tokens: bool = True, stop: list[str] | tuple[str, ...] = ()) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=skip_special_tokens, stop=tuple(stop))
