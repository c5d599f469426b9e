"""`minisgl chat [--multi-turn]`: the original mini-sglang's CLI demo. Reads a line from stdin, streams
the answer; with --multi-turn earlier turns stay in the conversation."""

from __future__ import annotations

import sys

import click

from ..sampling_params import SamplingParams
from .options import settings_options


@click.command(context_settings={"show_default": True})
@click.option("--multi-turn", is_flag=True, help="keep prior turns in context")
@click.option("--system", default=None, help="a system message")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.7)
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.95)
@click.option("--url", default=None, help="a running server (http://127.0.0.1:1919); default: start the engine here")
@settings_options
def chat(multi_turn: bool, system: str | None, max_new_tokens: int, temperature: float, top_p: float,
         url: str | None, settings, settings_sources) -> None:
    """Chat in the terminal: one line in, a streamed answer out (Ctrl-D to quit)."""
    from . import setup_logging

    setup_logging(settings.log_level)
    interactive = sys.stdin.isatty()
    history: list[dict[str, str]] = []
    llm = None
    if url:
        from .local_engine import stream_chat_url

        body = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}

        def answer(messages: list[dict[str, str]]):
            return stream_chat_url(url, messages, body)
    else:
        from .local_engine import start_llm, stream_local

        llm = start_llm(settings)
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)

        def answer(messages: list[dict[str, str]]):
            return stream_local(llm, llm.encode_chat(messages), sampling)

    if interactive:
        click.echo(f"minisgl chat ({'multi-turn' if multi_turn else 'single-turn'}); Ctrl-D to quit", err=True)
    try:
        while True:
            if interactive:
                click.echo(">>> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line:
                break
            user = line.rstrip("\n")
            if not user.strip():
                continue
            messages = ([{"role": "system", "content": system}] if system else []) + history + [{"role": "user", "content": user}]
            reply = []
            for text in answer(messages):
                sys.stdout.write(text)
                sys.stdout.flush()
                reply.append(text)
            sys.stdout.write("\n")
            sys.stdout.flush()
            if multi_turn:
                history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(reply)}]
    except KeyboardInterrupt:
        pass
    finally:
        if llm is not None:
            llm.shutdown()
