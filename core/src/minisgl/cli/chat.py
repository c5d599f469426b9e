"""`minisgl chat [--multi-turn]`: a terminal chat in the manner of `ollama run`. Reads a line,
streams the answer; with --multi-turn earlier turns stay in the conversation. `/clear`
forgets them, `/bye` (or Ctrl-D) quits. The engine's logs go to a file in the cache
directory (to stderr with -v), so only the conversation reaches the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO

import click

from ..sampling_params import SamplingParams
from .options import sampling_options, settings_options

HELP = "/clear  forget the conversation\n/bye    quit (or Ctrl-D)\n/?      this help"


def log_path() -> str:
    from ..models import cache_dir

    return str(cache_dir() / "logs" / "chat.log")


@contextlib.contextmanager
def logs_to_file(path: str) -> Iterator[TextIO]:
    """Point file descriptor 2 at `path` (engine processes inherit it, and so do the libraries
    that print warnings) and yield a stream to the real stderr for the prompt."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()


@click.command(context_settings={"show_default": True})
@click.option("--multi-turn", is_flag=True, help="keep prior turns in context (/clear forgets them)")
@click.option("--system", default=None, help="a system message")
@sampling_options(max_new_tokens=256, temperature=0.7, top_p=0.95)  # a conversation samples, like ollama's
@click.option("-v", "--verbose", is_flag=True, help="engine logs to stderr (default: to a file in the cache dir)")
@settings_options(engine_only=True)
def chat(multi_turn: bool, system: str | None, max_new_tokens: int, temperature: float, top_p: float,
         url: str | None, verbose: bool, settings, settings_sources) -> None:
    """Chat in the terminal: one line in, a streamed answer out (/bye or Ctrl-D to quit)."""
    from . import setup_logging

    log_file = None if verbose else log_path()
    quiet = contextlib.nullcontext(sys.stderr) if log_file is None else logs_to_file(log_file)
    try:
        with quiet as terminal:
            setup_logging(settings.log_level)
            _converse(multi_turn, system, max_new_tokens, temperature, top_p, url, settings, terminal)
    except click.ClickException as exc:
        if log_file:
            exc.message += f" (engine log: {log_file})"
        raise


def _converse(multi_turn: bool, system: str | None, max_new_tokens: int, temperature: float, top_p: float,
              url: str | None, settings, terminal: TextIO) -> None:
    interactive = sys.stdin.isatty()
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
        mode = "multi-turn" if multi_turn else "single-turn"
        terminal.write(f"minisgl chat ({mode}): /? for help, /bye to quit\n")
    history: list[dict[str, str]] = []
    try:
        while True:
            if interactive:
                terminal.write(">>> ")
                terminal.flush()
            line = sys.stdin.readline()
            if not line:
                break
            user = line.strip()
            if not user:
                continue
            if user in ("/bye", "/exit", "/quit"):
                break
            if user == "/clear":
                history.clear()
                terminal.write("Cleared the conversation.\n")
                continue
            if user in ("/?", "/help"):
                terminal.write(HELP + "\n")
                continue
            if user.startswith("/") and " " not in user:
                terminal.write(f"Unknown command {user}; /? lists them.\n")
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
