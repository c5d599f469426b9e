"""Tool calls: the chat answer's function calls, parsed while it streams, and the grammar
that forces them when the request says it must call one.

A tool-call format (`--tool-call-parser`: hermes, qwen, llama3, or a plugin's
ToolCallParserSpec) says how a model writes its calls. The built-in formats are JSON
objects `{"name": ..., "arguments": {...}}`, either in tags (Hermes and Qwen:
`<tool_call>\\n{...}\\n</tool_call>`) or bare at the start of the answer and joined by `;`
(Llama 3, whose key is "parameters"). Its parser turns the answer's text into content and
tool-call deltas in OpenAI's shape: a call's first delta carries its id and name, the next
ones fragments of its arguments, exactly as the model wrote them, so a non-stream answer is
the concatenation of the stream's pieces.

`tool_use(...)` is the one rule of OpenAI's `tools`, `tool_choice` and
`parallel_tool_calls`: which tools the chat template renders, whether the grammar forces a
call (`required`, or a named function: the model's own format, with each function's
parameters as the schema of its arguments) and whether the answer is parsed (`auto`).

`model_format(...)` is the one rule of which format a model's answers are parsed in when
no flag names one: the registered format whose markers its chat template writes. A
template that does not render `tools` at all gets them from the format itself: a system
preamble listing them, earlier calls written as the format writes them, results in
<tool_response> tags (`JSONToolCalls.write_tools`).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..plugins import get_registry
from .errors import invalid
from .reasoning import held_suffix

log = logging.getLogger("minisgl.frontend")

TOOL_CHOICES = ("none", "auto", "required")


@dataclass
class ToolCallDelta:
    """What one piece of text adds to the answer's call `index`: its first delta has the id
    and the name, the others fragments of the arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""  # JSON text, as the model wrote it

    @staticmethod
    def fold(calls: list[ToolCall], delta: ToolCallDelta) -> None:
        """Add a delta to the calls made so far."""
        if delta.name is not None:
            calls.append(ToolCall(delta.id or new_call_id(), delta.name))
        calls[delta.index].arguments += delta.arguments


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class _ValueEnd:
    """Finds where the JSON object or array that opens at `origin` of a growing text closes."""

    def __init__(self, origin: int) -> None:
        self.scanned, self.depth, self.in_string, self.escaped = origin, 0, False, False

    def find(self, text: str) -> int | None:
        for i in range(self.scanned, len(text)):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.scanned = i + 1
                    return i + 1
        self.scanned = len(text)
        return None


# a call whose name comes first can stream its arguments as they arrive
_NAME_FIRST = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*')


@dataclass
class _Call:
    index: int
    text: str = ""  # the call's JSON object so far
    ends: _ValueEnd = field(default_factory=lambda: _ValueEnd(0))
    named: bool = False
    args_at: int | None = None  # where the arguments start in `text`
    args_ends: _ValueEnd | None = None  # streaming the arguments (an object or an array)
    args_sent: int = 0  # `text` up to here went out as arguments
    args_end: int | None = None

    def push(self, text: str) -> tuple[int | None, list[ToolCallDelta]]:
        """Take more of the call's text: where its object ends (None: not yet), and deltas."""
        self.text += text
        out: list[ToolCallDelta] = []
        if not self.named and (m := _NAME_FIRST.match(self.text)):
            self.named, self.args_at = True, m.end()
            out.append(ToolCallDelta(self.index, new_call_id(), json.loads(m.group(1))))
        if self.args_at is not None and self.args_ends is None:
            while self.args_at < len(self.text) and self.text[self.args_at].isspace():
                self.args_at += 1
        if self.args_at is not None and self.args_ends is None and len(self.text) > self.args_at:
            if self.text[self.args_at] in "{[":
                self.args_ends, self.args_sent = _ValueEnd(self.args_at), self.args_at
            else:
                self.args_at = None  # not an object: sent whole once the call is complete
        end = self.ends.find(self.text)
        if self.args_ends is not None and self.args_end is None:
            self.args_end = self.args_ends.find(self.text)
            upto = self.args_end if self.args_end is not None else len(self.text)
            if upto > self.args_sent:
                out.append(ToolCallDelta(self.index, arguments=self.text[self.args_sent:upto]))
                self.args_sent = upto
        return end, out

    def complete(self, end: int) -> list[ToolCallDelta] | None:
        """The deltas that close the call (None: it was no call)."""
        if self.args_ends is not None:
            return []
        try:
            obj = json.loads(self.text[:end])
        except ValueError:
            obj = None
        args = obj.get("arguments", obj.get("parameters", {})) if isinstance(obj, dict) else None
        arguments = json.dumps(args, ensure_ascii=False)
        if self.named:
            return [ToolCallDelta(self.index, arguments=arguments if args is not None else self.text[self.args_at or 0:])]
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        return [ToolCallDelta(self.index, new_call_id(), obj["name"], arguments)]


class ToolCallParser:
    """One answer's text as (content, tool-call deltas), however it arrives in pieces.

    A `forced` answer (the grammar writes the calls) gives each call whole once it closes:
    one cut off by the length limit, or a partial tag, never reaches the client, and a call
    that repeats an earlier one word for word ends the answer (`done`)."""

    def __init__(self, fmt: JSONToolCalls, max_calls: int | None, forced: bool = False) -> None:
        self.fmt, self.max_calls, self.forced = fmt, max_calls, forced
        self.state = "opening" if not fmt.start else "content"  # then "call", "after", "text", "done"
        self.buffer = ""
        self.call: _Call | None = None
        self.calls = 0
        self.held: list[ToolCallDelta] = []  # a forced call's deltas until it closes
        self.made: set[tuple[str, str]] = set()  # a forced answer's calls so far: (name, arguments)

    @property
    def done(self) -> bool:
        """No more calls will be taken: the rest of the answer is dropped."""
        return self.state == "done"

    def _closed(self, deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
        """A forced call's deltas once it is whole, or none (and `done`) when it repeats one."""
        self.held += deltas
        call = (next((d.name for d in self.held if d.name is not None), ""), "".join(d.arguments for d in self.held))
        out, self.held = self.held, []
        if call in self.made:
            self.state = "done"
            return []
        self.made.add(call)
        return out

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self.buffer += text
        content, deltas = "", []
        start, end = self.fmt.start, self.fmt.end
        while self.buffer and self.state != "done":
            if self.state == "text":
                content, self.buffer = content + self.buffer, ""
            elif self.state == "opening":  # bare calls open the answer, or there are none
                lead = self.buffer.lstrip()
                if not lead:
                    break
                self.buffer, self.state = (lead, "call") if lead.startswith("{") else (self.buffer, "text")
                if self.state == "call":
                    self.call = _Call(self.calls)
            elif self.state == "content":
                if self.calls:
                    self.buffer = self.buffer.lstrip()  # between and after calls, space is no content
                at = self.buffer.find(start)
                if at >= 0:
                    content += self.buffer[:at]
                    self.buffer, self.state, self.call = self.buffer[at + len(start):], "call", _Call(self.calls)
                    continue
                hold = held_suffix(self.buffer, start)
                content += self.buffer[: len(self.buffer) - hold]
                self.buffer = self.buffer[len(self.buffer) - hold:]
                break
            elif self.state == "call":
                assert self.call is not None
                if not self.call.text:
                    self.buffer = self.buffer.lstrip()
                    if not self.buffer:
                        break
                    if not self.buffer.startswith("{"):  # the tag was text after all
                        content += start
                        self.state = "content" if start else "text"
                        continue
                piece, self.buffer = self.buffer, ""
                obj_end, new = self.call.push(piece)
                if self.forced:
                    self.held += new
                else:
                    deltas += new
                if obj_end is None:
                    break
                closing = self.call.complete(obj_end)
                self.buffer = self.call.text[obj_end:]
                if closing is None:
                    content += start + self.call.text[:obj_end]
                    self.state = "content" if start else "text"
                    self.held = []
                else:
                    deltas += self._closed(closing) if self.forced else closing
                    self.calls += 1
                    self.state = "done" if self.state == "done" else "after"
            else:  # after a call: its end tag, or the separator before the next one
                lead = self.buffer.lstrip()
                if not lead:
                    break
                closer = end or self.fmt.separator.strip()  # "; " in the grammar, ";" however spaced here
                if lead.startswith(closer):
                    self.buffer = lead[len(closer):]
                    if self.max_calls is not None and self.calls >= self.max_calls:
                        self.state = "done"
                    elif end:
                        self.state = "content"
                    else:
                        self.state, self.call = "call", _Call(self.calls)
                elif closer.startswith(lead):
                    break
                else:
                    self.state = "content" if start else "text"
        if self.state == "done":
            self.buffer = ""
        return content, deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What was held back: a call cut off before its name was known was text (a forced
        answer's unfinished call and tags are dropped)."""
        rest, self.buffer = self.buffer, ""
        if self.forced:
            self.held = []
            return "", []
        if self.state in ("content", "text", "opening"):
            return rest, []
        if self.state == "call" and self.call is not None and not self.call.named and self.call.text:
            return self.fmt.start + self.call.text, []
        if self.state == "call" and self.call is not None and self.call.named and self.call.args_ends is None:
            return "", [ToolCallDelta(self.call.index, arguments=self.call.text[self.call.args_at or len(self.call.text):])]
        return "", []


# calls written as the chat templates show them: {"name": "f", "arguments": {"a": 1}}
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _literal(text: str) -> str:
    return json.dumps(text)


@dataclass(frozen=True)
class JSONToolCalls:
    """Calls as JSON objects {"name", <args_key>}: in `start`/`end` tags, or (no tags) bare
    at the start of the answer, joined by `separator`."""

    start: str = ""
    end: str = ""
    separator: str = "\n"  # between two calls, in the grammar; the parser takes any space
    args_key: str = "arguments"
    markers: tuple[str, ...] = ()  # text a chat template holds when its model writes calls this way

    def parser(self, max_calls: int | None = None, forced: bool = False) -> ToolCallParser:
        return ToolCallParser(self, max_calls, forced)

    def call_text(self, name: str, arguments: Any) -> str:
        """One call as the model writes it."""
        call = json.dumps({"name": name, self.args_key: arguments}, ensure_ascii=False)
        return f"{self.start}\n{call}\n{self.end}" if self.start else call

    def preamble(self, tools: Sequence[Any]) -> str:
        """The system text that teaches a model whose chat template ignores `tools` to call them."""
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        example = self.call_text("<function-name>", "<arguments-json-object>").replace('"<', "<").replace('>"', ">")
        several = ("Write each call this way, one after another." if self.start
                   else f"Answer with the calls alone, joined by {self.separator.strip()!r}.")
        return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listed}\n"
                f"</tools>\n\nTo call a function, write a JSON object with its name and arguments:\n{example}\n"
                f"{several} Results come back within <tool_response></tool_response> XML tags.")

    def write_tools(self, conversation: list[dict[str, Any]], tools: Sequence[Any]) -> list[dict[str, Any]]:
        """A chat template's messages with the tools in them, for a template that renders no
        `tools`: the preamble opens the system message, an assistant's earlier calls follow
        its content as this format writes them, a tool's result is a user message in tags."""
        out = []
        for m in conversation:
            if m["role"] == "assistant" and m.get("tool_calls"):
                calls = [self.call_text(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
                text = "\n".join([m["content"], *calls] if m.get("content") else calls)
                m = {k: v for k, v in m.items() if k != "tool_calls"} | {"content": text}
            elif m["role"] == "tool" and isinstance(m["content"], str):
                m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
            out.append(m)
        preamble = self.preamble(tools)
        if out and out[0]["role"] in ("system", "developer") and isinstance(out[0]["content"], str):
            return [{**out[0], "content": f"{out[0]['content']}\n\n{preamble}"}, *out[1:]]
        return [{"role": "system", "content": preamble}, *out]

    def grammar(self, functions: Sequence[dict[str, Any]], parallel: bool) -> str:
        """A Lark grammar (llguidance's) of one call, or several with `parallel`, to any of
        `functions`, each one's arguments following its parameters' schema."""
        rules, names = [], []
        for i, fn in enumerate(functions):
            schema = {"type": "object", "properties": {"name": {"const": fn["name"]},
                                                       self.args_key: fn.get("parameters") or {"type": "object"}},
                      "required": ["name", self.args_key], "additionalProperties": False,
                      "x-guidance": JSON_LAYOUT}
            rules.append(f"fn{i}: %json {json.dumps(schema)}")
            names.append(f"fn{i}")
        opening = _literal(self.start + "\n") + " " if self.start else ""
        closing = " " + _literal("\n" + self.end) if self.end else ""
        call = f"call: {opening}({' | '.join(names)}){closing}"
        repeat = f" ({_literal(self.separator)} call)*" if parallel else ""
        return "\n".join([f"start: call{repeat}", call, *rules]) + "\n"


# Hermes 2/3, Qwen 2.5 and Qwen 3
HERMES = JSONToolCalls(start="<tool_call>", end="</tool_call>", markers=("<tool_call>",))
# Llama 3.1-3.3 JSON tool calling (its template asks for this shape in words)
LLAMA3 = JSONToolCalls(separator="; ", args_key="parameters", markers=('"parameters": dictionary of argument name',))
DEFAULT_FORMAT = HERMES  # forces calls when no format is known; writes tools a template ignores


@dataclass(frozen=True)
class ToolUse:
    """What a request's tools ask of the request layer."""

    tools: list[dict[str, Any]] | None  # what the chat template renders
    grammar: str | None = None  # forces the calls (tool_choice required or a named function)
    parser: Callable[[], ToolCallParser] | None = None  # parses the answer's calls
    writer: JSONToolCalls | None = None  # writes `tools` into the messages: the template ignores them


def _functions(tools: Sequence[Any]) -> list[dict[str, Any]]:
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise invalid(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}",
                          "tools")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise invalid(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
        if any(f["name"] == fn["name"] for f in functions):
            raise invalid(f"tools[{i}]: two functions are named {fn['name']!r}", "tools")
        functions.append(fn)
    return functions


def tool_use(fmt: JSONToolCalls | None, tools: Sequence[Any] | None, tool_choice: Any = None,
             parallel_tool_calls: bool = True, write_tools: bool = False) -> ToolUse | None:
    """OpenAI's rule: `none` renders no tools and parses nothing; `auto` (the default with
    tools) lets the model choose and needs a format (`model_format`); `required` and a
    named function ({"type": "function", "function": {"name": ...}}) force calls through the
    grammar, in the format's shape or Hermes' without one. With `write_tools` the format
    writes the tools into the messages (the chat template ignores them). None: the request
    has no tools."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise invalid("'tool_choice' needs 'tools'", "tool_choice")
        return None
    functions = _functions(tools)
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return ToolUse(tools=None)
    max_calls = None if parallel_tool_calls else 1
    if choice == "auto":
        if fmt is None:
            raise invalid("'tools' with tool_choice 'auto': no tool-call format matches this model's chat template, "
                          "so it needs the server started with a tool-call parser "
                          f"(--tool-call-parser: {', '.join(get_registry().names('tool_call_parser'))})", "tools")
        return ToolUse(list(tools), parser=lambda: fmt.parser(max_calls), writer=fmt if write_tools else None)
    forced = fmt or DEFAULT_FORMAT
    writer = forced if write_tools else None
    if choice == "required":
        return ToolUse(list(tools), forced.grammar(functions, parallel_tool_calls),
                       lambda: forced.parser(max_calls, forced=True), writer)
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise invalid(f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)} or "
                      "{'type': 'function', 'function': {'name': ...}}", "tool_choice")
    chosen = [f for f in functions if f["name"] == name]
    if not chosen:
        raise invalid(f"'tool_choice' names function {name!r}, which is not in 'tools'", "tool_choice")
    return ToolUse(list(tools), forced.grammar(chosen, False), lambda: forced.parser(1, forced=True), writer)


def template_format(template: str) -> tuple[str, JSONToolCalls] | None:
    """The first registered tool-call format (by name) whose markers `template` holds."""
    registry = get_registry()
    for name in registry.names("tool_call_parser"):
        try:
            fmt = registry.get("tool_call_parser", name).load()
        except Exception:  # a plugin's format that cannot load is no candidate
            continue
        if any(marker in template for marker in getattr(fmt, "markers", ())):
            return name, fmt
    return None


def model_format(fmt: JSONToolCalls | None, template: str, renders_tools: bool) -> tuple[JSONToolCalls | None, bool]:
    """The tool-call format of a model's answers, and whether it writes the tools into the
    messages itself: the flag's (--tool-call-parser), else the one whose markers the chat
    template writes; a template that renders no tools gets them from the flag's format or
    Hermes'. None: no format is known (tool_choice 'auto' is refused)."""
    if not renders_tools and hasattr(fmt or DEFAULT_FORMAT, "write_tools"):  # a plugin's format may not
        fmt = fmt or DEFAULT_FORMAT
        log.info("the chat template does not render tools: a request's tools are written into its system message "
                 "in the %s tool-call format", fmt.start or "bare JSON")
        return fmt, True
    if fmt is not None:
        return fmt, False
    found = template_format(template)
    if found is None:
        log.info("no tool-call parser matches the chat template: tool_choice 'auto' needs --tool-call-parser")
        return None, False
    log.info("tool-call parser %r chosen: the chat template writes its calls", found[0])
    return found[1], False
