"""`minisgl chat` in a terminal (a pty), as a user types into it: the conversation without
the engine's log lines, /clear and /bye."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.screen = ""

    def expect(self, pattern: str, timeout: float = 240) -> str:
        """Read until `pattern` shows after what was read before; returns the new text."""
        start, deadline = len(self.screen), time.monotonic() + timeout
        while not re.search(pattern, self.screen[start:]):
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, f"no {pattern!r} in:\n{self.screen[-3000:]}"
            if select.select([self.master], [], [], min(left, 1.0))[0]:
                try:
                    self.screen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the process closed the terminal
                    pass
        return self.screen[start:]

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())


def test_chat_shows_only_the_conversation_and_obeys_clear_and_bye(tmp_path, tiny_qwen3_path):
    env = {**os.environ, "MINISGL_CACHE_DIR": str(tmp_path)}  # the engine log goes under it
    term = Terminal([sys.executable, "-m", "minisgl", "chat", "--multi-turn", "--max-new-tokens", "4",
                     "--temperature", "0", "--model-path", tiny_qwen3_path, "--num-pages", "4096"], env)
    try:
        term.expect(r"/bye to quit[\s\S]*>>> ")
        term.type("hello there")
        term.expect(r"hello there\r?\n[\s\S]+>>> ")
        term.type("hello there")  # the second turn's prompt holds the first turn
        term.expect(r">>> ")
        term.type("/clear")
        term.expect(r"Cleared the conversation\.[\s\S]*>>> ")
        term.type("hello there")  # after /clear: the first turn's prompt again
        term.expect(r">>> ")
        term.type("/bye")
        assert term.proc.wait(timeout=60) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        os.close(term.master)
    assert not re.search(r"\b(INFO|WARNING|DEBUG)\b", term.screen), term.screen
    log = (tmp_path / "logs" / "chat.log").read_text()
    lengths = [int(n) for n in re.findall(r"prefill rid=\S+ len=(\d+)", log)]
    assert len(lengths) == 3, log[-3000:]
    assert lengths[1] > lengths[0] and lengths[2] == lengths[0]  # history kept, then forgotten


def test_chat_logs_to_stderr_with_verbose(tiny_qwen3_path):
    out = subprocess.run(
        [sys.executable, "-m", "minisgl", "chat", "-v", "--max-new-tokens", "2", "--model-path", tiny_qwen3_path,
         "--num-pages", "4096"],
        input="hi\n/bye\nnot read\n", capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "prefill rid=" in out.stderr and "INFO" not in out.stdout
    assert len([line for line in out.stderr.splitlines() if "prefill rid=" in line]) == 1  # /bye stopped it
