"""A benchmark report names the settings its environment gave the engine."""

from __future__ import annotations

from minisgl_bench.environment import header, header_lines


def test_the_header_names_settings_from_the_environment(monkeypatch):
    monkeypatch.delenv("MAX_RUNNING_REQUESTS", raising=False)
    assert "max_running_requests" not in header(model="m").get("settings from the environment", {})
    monkeypatch.setenv("MAX_RUNNING_REQUESTS", "4")
    head = header(model="m")
    assert head["settings from the environment"] == {"max_running_requests": 4}
    assert "settings from the environment: {'max_running_requests': 4}" in header_lines(head)
    monkeypatch.setenv("MAX_RUNNING_REQUESTS", "many")
    assert "max_running_requests" in header(model="m")["settings from the environment"]["invalid"]
