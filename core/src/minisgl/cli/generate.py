"""`minisgl generate "prompt"`: the original mini-sglang's smoke test. Streams one completion to stdout,
through prefill and decode, from an in-process engine or a running server (--url)."""

from __future__ import annotations

import sys
import time

import click

from ..sampling_params import SamplingParams
from .options import sampling_options, settings_options


@click.command(context_settings={"show_default": True})
@click.argument("prompt")
@sampling_options(max_new_tokens=32, temperature=0.0, top_p=1.0)  # a short, repeatable smoke test
@click.option("--seed", type=int, default=None)
@click.option("--chat", is_flag=True, help="wrap the prompt in the model's chat template")
@settings_options(engine_only=True)
def generate(prompt: str, max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
             chat: bool, url: str | None, settings, settings_sources) -> None:
    """Stream a completion of PROMPT to stdout (logs go to stderr)."""
    from . import setup_logging

    setup_logging(settings.log_level)
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    started = time.perf_counter()
    pieces = 0
    if url:
        from .local_engine import stream_chat_url, stream_generate_url

        if chat:
            body = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
            chunks = stream_chat_url(url, [{"role": "user", "content": prompt}], body)
        else:
            chunks = stream_generate_url(url, prompt, {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed})
        for text in chunks:
            sys.stdout.write(text)
            sys.stdout.flush()
            pieces += 1
    else:
        from .local_engine import start_llm, stream_local

        with start_llm(settings) as llm:
            source = llm.encode_chat([{"role": "user", "content": prompt}]) if chat else prompt
            for text in stream_local(llm, source, sampling):
                sys.stdout.write(text)
                sys.stdout.flush()
                pieces += 1
    sys.stdout.write("\n")
    click.echo(f"[{pieces} chunks in {time.perf_counter() - started:.2f}s]", err=True)
    if pieces == 0 and not chat:
        click.echo("[the model stopped at once: instruct models answer better with --chat]", err=True)
