"""Reasoning parsers: split a chat answer's thinking (`<think>...</think>`) from its content,
while it streams, so `reasoning_content` and `content` come apart in stream and non-stream
alike (a non-stream answer is the concatenation of the stream's pieces).

`--reasoning-parser` names one (qwen3, deepseek-r1, or a plugin's ReasoningParserSpec); its
factory returns a fresh splitter per sample: `push(text) -> (reasoning, content)` and,
at the end, `finish() -> (reasoning, content)` for whatever was held back.
"""

from __future__ import annotations

from typing import Protocol


class ReasoningSplitter(Protocol):
    def push(self, text: str) -> tuple[str, str]: ...

    def finish(self) -> tuple[str, str]: ...


def held_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ThinkSplitter:
    """Text between `start` and `end` is reasoning, text after `end` is content (its leading
    whitespace dropped). With `starts_inside` the answer is reasoning from its first token
    (the chat template already wrote `start` into the prompt); otherwise an answer that does
    not open with `start` is content throughout."""

    def __init__(self, start: str = "<think>", end: str = "</think>", starts_inside: bool = False) -> None:
        self.start, self.end, self.starts_inside = start, end, starts_inside
        self.state = "opening"  # then "inside" (reasoning) and "content"
        self.buffer = ""
        self.strip_next = False  # the content right after `end` starts at its first non-space

    def push(self, text: str) -> tuple[str, str]:
        self.buffer += text
        reasoning = content = ""
        while self.buffer:
            if self.state == "opening":
                lead = self.buffer.lstrip()
                if lead.startswith(self.start):
                    self.buffer, self.state = lead[len(self.start):], "inside"
                elif self.start.startswith(lead):
                    break  # whitespace, or the opening tag still arriving
                else:
                    self.state = "inside" if self.starts_inside else "content"
            elif self.state == "inside":
                at = self.buffer.find(self.end)
                if at >= 0:
                    reasoning += self.buffer[:at]
                    self.buffer, self.state, self.strip_next = self.buffer[at + len(self.end):], "content", True
                    continue
                hold = held_suffix(self.buffer, self.end)
                reasoning += self.buffer[: len(self.buffer) - hold]
                self.buffer = self.buffer[len(self.buffer) - hold:]
                break
            else:
                if self.strip_next:
                    self.buffer = self.buffer.lstrip()
                    if not self.buffer:
                        break
                    self.strip_next = False
                content, self.buffer = content + self.buffer, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """Flush what was held: unfinished thinking (cut off by length) stays reasoning."""
        rest, self.buffer = self.buffer, ""
        if self.state == "inside" or (self.state == "opening" and self.starts_inside):
            return rest, ""
        return "", rest.lstrip() if self.strip_next else rest


def qwen3() -> ThinkSplitter:
    """Qwen3 (and QwQ): the model opens `<think>` itself; with enable_thinking=False the
    template writes an empty block into the prompt and the answer is all content."""
    return ThinkSplitter(starts_inside=False)


def deepseek_r1() -> ThinkSplitter:
    """DeepSeek-R1 and Qwen3's thinking-only models: the template opens `<think>` in the
    prompt, so the answer is reasoning until `</think>`."""
    return ThinkSplitter(starts_inside=True)
