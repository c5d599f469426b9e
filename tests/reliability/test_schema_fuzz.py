"""A bounded schemathesis run against /schema of a real server on the tiny model: every
operation in the OpenAPI document gets a fixed number of generated requests, valid and
invalid (derandomized, so CI sees the same ones each run), and every answer must be

- no 5xx (but the documented 503 `unavailable` of the image/video routes, which this
  server has no model for),
- a status the document lists for that operation, with the documented content type and
  a body that matches the documented schema,
- for any error, OpenAI's body: {"error": {"message", "type", "param", "code"}} (Anthropic's
  {"type": "error", "error": {"type", "message"}} on /v1/messages).

Generation stays cheap: token budgets are clamped to a few tokens and streams are turned
off before a request is sent (streaming has its own tests); image/video routes answer 503
at once on a server without an image model."""

from __future__ import annotations

import time
from typing import Any

import pytest
from server_process import start_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 50  # per operation and generation mode
BUDGET_KEYS = ("max_tokens", "max_new_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens",
               "min_new_tokens")
MAX_TOKENS = 4
MAX_N = 2
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
UNCONFIGURED = ("/v1/images/generations", "/v1/videos/generations")  # 503 unavailable: no image model here


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--responses-store", ":memory:", log_dir=tmp_path_factory.mktemp("schema-fuzz"))
    yield srv
    srv.stop()


def _clamp(body: Any) -> None:
    """Keep generated requests cheap: a few tokens, few sequences, no streams."""
    if not isinstance(body, dict):
        return
    for key in BUDGET_KEYS:
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool) and body["n"] > MAX_N:
        body["n"] = MAX_N
    for key in ("best_of", "top_logprobs", "logprobs"):
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > 5:
            body[key] = 5
    if body.get("stream") is True:
        body["stream"] = False
    _clamp(body.get("sampling_params"))


def _server_error(response: Any, case: Any) -> str | None:
    """Why a 5xx is a failure (every one is, but the unconfigured image/video routes' 503)."""
    if response.status_code < 500:
        return None
    if response.status_code == 503 and case.operation.path in UNCONFIGURED:
        try:
            if response.json()["error"]["code"] == "unavailable":
                return None
        except Exception:
            pass
    return f"server error: {response.text[:300]!r}"


def _openai_error_shape(response: Any, case: Any) -> str | None:
    """Why an error answer is not OpenAI's error body, or None."""
    if response.status_code < 400:
        return None
    if case.operation.path == "/health" and response.status_code == 503:
        return None  # documented: the health document itself
    try:
        body = response.json()
    except Exception:
        return f"not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if case.operation.path == "/v1/messages":  # Anthropic's error body there
        if body.get("type") != "error" or not isinstance(error, dict) or set(error) != {"type", "message"}:
            return f"not Anthropic's {{'type': 'error', 'error': {{'type', 'message'}}}}: {body!r:.300}"
        return None if isinstance(error["message"], str) and error["message"] else f"error message: {error!r:.300}"
    if not isinstance(error, dict) or set(body) != {"error"}:
        return f"not {{'error': {{...}}}}: {body!r:.300}"
    if set(error) != {"message", "type", "param", "code"}:
        return f"error fields {sorted(error)}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return f"error message/type: {error!r:.300}"
    return None


def _fuzz(url: str, operation: Any, mode: GenerationMode, calls: dict[str, int]) -> list[str]:
    """EXAMPLES generated requests to one operation; what went wrong with them."""
    seen: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _clamp(case.body)
        response = case.call(base_url=url, timeout=60)
        calls[operation.label] = calls.get(operation.label, 0) + 1
        problems = [_server_error(response, case), _openai_error_shape(response, case)]
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:  # a FailureGroup: keep going, report them all at the end
            if isinstance(exc, KeyboardInterrupt):
                raise
            problems.append(f"{exc!s:.600}")
        for problem in filter(None, problems):
            seen.append(f"{operation.label} [{mode.value}] {response.status_code}: {problem}\n"
                        f"    curl: {case.as_curl_command()[:600]}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (GET /v1/models takes no input)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return seen


def test_schemathesis_finds_nothing(server):
    schema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    failures: list[str] = []
    calls: dict[str, int] = {}
    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += _fuzz(server.url, operation, mode, calls)[:3]  # the first few of each: enough to see the bug
    elapsed = time.monotonic() - started
    print(f"schemathesis {schemathesis.__version__}: {sum(calls.values())} requests in {elapsed:.1f}s: {calls}")
    assert sum(calls.values()) >= len(operations) * EXAMPLES, calls
    assert not failures, f"{len(failures)} failure(s) in {elapsed:.0f}s:\n" + "\n".join(failures)
    assert "Traceback" not in server.log(tail=None), server.log()
