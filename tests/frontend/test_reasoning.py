"""--reasoning-parser: the thinking of a chat answer comes apart from its content, the same
however the text arrives in pieces, through the request layer, LLM.chat and the server."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest
from server_process import start_server

from minisgl import LLM, SamplingParams
from minisgl.engine.messages import EngineOutput
from minisgl.frontend.generation import Frontend
from minisgl.frontend.reasoning import deepseek_r1, qwen3
from minisgl.frontend.tokenizer import Tokenizer
from minisgl.plugins import SelectionError, load_selected

CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


def split_in_pieces(make, text: str, cuts: list[int]) -> tuple[str, str]:
    splitter = make()
    reasoning = content = ""
    for lo, hi in zip([0, *cuts], [*cuts, len(text)]):
        r, c = splitter.push(text[lo:hi])
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c


@pytest.mark.parametrize(("make", "text", "want"), [
    (qwen3, "<think>\nsky scatters blue</think>\n\nRayleigh scattering.", ("\nsky scatters blue", "Rayleigh scattering.")),
    (qwen3, "  <think>a</think>b", ("a", "b")),
    (qwen3, "No thinking here, <think> is just text", ("", "No thinking here, <think> is just text")),
    (qwen3, "<think>cut off by length", ("cut off by length", "")),
    (qwen3, "<thi", ("", "<thi")),  # ended before the tag could be told apart: it was text
    (deepseek_r1, "the template opened it</think>The answer", ("the template opened it", "The answer")),
    (deepseek_r1, "<think>opened twice</think> x", ("opened twice", "x")),
    (deepseek_r1, "a < b, and </thin is not the end", ("a < b, and </thin is not the end", "")),
    (deepseek_r1, "</think>", ("", "")),
])
def test_every_way_of_cutting_the_text_gives_the_same_split(make, text, want):
    assert split_in_pieces(make, text, []) == want
    for cut in range(1, len(text)):
        assert split_in_pieces(make, text, [cut]) == want, cut
    assert split_in_pieces(make, text, list(range(1, len(text)))) == want  # one character at a time


def test_an_unknown_parser_is_refused_naming_the_flag_and_the_installed_ones():
    assert load_selected("reasoning_parser", None) is None
    with pytest.raises(SelectionError, match=r"--reasoning-parser: unknown reasoning parser 'r2'; "
                                                   r"installed: deepseek-r1, qwen3"):
        load_selected("reasoning_parser", "r2")


def test_the_request_layer_splits_streamed_tokens(tiny_qwen3_path):
    tok = Tokenizer(tiny_qwen3_path)
    frontend = Frontend(tok, max_context_len=512, eos_token_ids=[], max_new_tokens_default=64,
                        reasoning=load_selected("reasoning_parser", "qwen3"))
    answer = "<think>Light scatters.</think>\n\nBecause of Rayleigh scattering."
    ids = tok.tokenizer(answer, add_special_tokens=False).input_ids
    gen = frontend.generation("r", [[1, 2, 3]], SamplingParams(max_new_tokens=len(ids)), separate_reasoning=True)
    plain = frontend.generation("p", [[1, 2, 3]], SamplingParams(max_new_tokens=len(ids)))
    pieces = []
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        for g in (gen, plain):
            rid = g.samples[0].rid
            d = g.update(EngineOutput(rid=rid, new_token_ids=[t], finished=last, finish_reason="length" if last else None))
            if g is gen and d is not None:
                pieces.append((d.reasoning, d.text))
    seq = gen.samples[0]
    assert (seq.reasoning, seq.text) == ("Light scatters.", "Because of Rayleigh scattering.")
    assert "".join(r for r, _ in pieces) == seq.reasoning and "".join(c for _, c in pieces) == seq.text
    assert plain.samples[0].text == tok.tokenizer.decode(ids) and plain.samples[0].reasoning == ""


def test_llm_chat_moves_the_thinking_out_of_text(tiny_qwen3_path):
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    with LLM(tiny_qwen3_path, reasoning_parser="deepseek-r1") as llm:
        chat = llm.chat(CHAT, params).outputs[0]
        completion = llm.generate([llm.encode_chat(CHAT)], params)[0].outputs[0]
    # a random model never closes the block the template opened: all of it is reasoning
    assert chat.reasoning == completion.text and chat.text == ""
    assert completion.reasoning is None


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--reasoning-parser", "deepseek-r1",
                       log_dir=tmp_path_factory.mktemp("server-reasoning"))
    yield srv
    srv.stop()


def test_server_answers_reasoning_content_in_stream_and_non_stream(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    kwargs = dict(model=client.models.list().data[0].id, messages=CHAT, max_tokens=10, temperature=0,
                  extra_body={"ignore_eos": True})
    message = client.chat.completions.create(**kwargs).choices[0].message
    assert message.reasoning_content and not message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == message.reasoning_content
    assert "".join(d.content or "" for d in deltas) == ""
    kept = client.chat.completions.create(**{**kwargs, "extra_body": {"ignore_eos": True, "separate_reasoning": False}})
    assert kept.choices[0].message.content == message.reasoning_content
    assert getattr(kept.choices[0].message, "reasoning_content", None) is None


def test_serve_with_an_unknown_parser_exits_with_a_usage_error(tiny_qwen3_path):
    proc = subprocess.run([sys.executable, "-m", "minisgl", "serve", "--model-path", tiny_qwen3_path,
                           "--reasoning-parser", "r2", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--reasoning-parser: unknown reasoning parser 'r2'; installed: deepseek-r1, qwen3" in proc.stderr
