"""The tool-call format without a flag: the chat template's markers choose it; a template
that ignores `tools` gets them written into the messages in the format's own words; a
forced answer cut by the length limit leaks no tag and no unterminated arguments."""

from __future__ import annotations

import json

import pytest

from minisgl import LLM, SamplingParams
from minisgl.frontend.tokenizer import Tokenizer, encode_chat
from minisgl.frontend.tool_calls import HERMES, LLAMA3, model_format, template_format, tool_use

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_the_template_markers_choose_the_format():
    assert template_format("{{ '<tool_call>' }}") == ("hermes", HERMES)
    assert template_format('Respond in the format {"name": function name, "parameters": dictionary of argument name '
                           "and its value}") == ("llama3", LLAMA3)
    assert template_format("{{ messages }}") is None
    assert model_format(None, "{{ messages }}", renders_tools=True) == (None, False)  # auto is then refused
    assert model_format(LLAMA3, "{{ '<tool_call>' }}", renders_tools=True) == (LLAMA3, False)  # the flag wins
    assert model_format(None, "{{ messages }}", renders_tools=False) == (HERMES, True)


def test_a_qwen_template_renders_tools_and_picks_hermes(tiny_qwen3_path):
    tok = Tokenizer(tiny_qwen3_path)
    assert tok.renders_tools
    assert model_format(None, tok.chat_template_text, tok.renders_tools) == (HERMES, False)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
    return Tokenizer(smollm2_path)


def test_a_template_that_ignores_tools_gets_them_in_a_preamble(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert not tok.renders_tools
    plain = tok.decode(encode_chat(tok, CHAT, tools=TOOLS).ids)
    assert plain == tok.decode(encode_chat(tok, CHAT).ids)  # what the template alone does with tools
    use = tool_use(HERMES, TOOLS, "auto", write_tools=True)
    history = [{"role": "system", "content": "Be helpful."}, *CHAT,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "18 degrees"}]
    text = tok.decode(encode_chat(tok, history, tools=use.tools, tools_writer=use.writer).ids, skip_special_tokens=False)
    system = text[:text.index("<|im_end|>")]
    assert system.startswith("<|im_start|>system\nBe helpful.\n\n# Tools") and '"name": "get_weather"' in system
    assert "<tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-json-object>}\n</tool_call>" in system
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\n18 degrees\n</tool_response>" in text


def test_forced_calls_cut_by_length_leak_nothing(smollm2_path):
    with LLM(smollm2_path, dtype="float32") as llm:
        assert llm.frontend.writes_tools and llm.frontend.tool_calls is HERMES
        for max_new in (1, 3, 9, 14):
            out = llm.chat(CHAT, SamplingParams(max_new_tokens=max_new, temperature=0), tools=TOOLS,
                           tool_choice="required").outputs[0]
            assert out.text == "", (max_new, out)
            for call in out.tool_calls or []:
                json.loads(call.arguments)  # whole calls only
        whole = llm.chat(CHAT, SamplingParams(max_new_tokens=200, temperature=0), tools=TOOLS,
                         tool_choice="required").outputs[0]
        assert whole.finish_reason == "tool_calls" and whole.text == ""
        calls = [(c.name, c.arguments) for c in whole.tool_calls]
        assert calls and len(set(calls)) == len(calls)  # a call repeated word for word ends the answer
        assert json.loads(whole.tool_calls[0].arguments)["city"]
