"""The OpenAI Agents SDK against `minisgl serve` on smollm2-135m, through its default model
(the Responses API): an agent with a function tool runs to its end with the SDK's default
settings, and a forced tool call makes the round trip to the Python function."""

from __future__ import annotations

import pytest
from server_process import start_server

agents = pytest.importorskip("agents")
from openai import AsyncOpenAI  # noqa: E402

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    srv = start_server(smollm2_path, "--served-model-name", MODEL, "--responses-store", ":memory:", "--dtype", "float32",
                       log_dir=tmp_path_factory.mktemp("server-agents"))
    agents.set_default_openai_client(AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused"), use_for_tracing=False)
    agents.set_tracing_disabled(True)
    yield srv
    srv.stop()


def weather_agent(calls: list[str], instructions: str = "Answer with the tools.", **settings) -> agents.Agent:
    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny, 21 C in {city}"

    return agents.Agent(name="weather", instructions=instructions, tools=[get_weather], model=MODEL, **settings)


def test_an_agent_runs_to_its_end_with_default_settings(server):
    """Default settings but greedy, on a question a 135M model answers briefly: sampled at
    temperature 1 it may ramble past the server's default budget of new tokens, and the SDK
    raises on that `response.incomplete` as it would against OpenAI's service."""
    agent = weather_agent([], "You are a helpful assistant.", model_settings=agents.ModelSettings(temperature=0.0))
    result = agents.Runner.run_sync(agent, "What is the capital of France?", max_turns=10)
    assert isinstance(result.final_output, str) and result.final_output.strip()


def test_a_forced_tool_call_reaches_the_function(server):
    """Greedy: sampled, a 135M model may fill the required city with "", which the tool's
    schema allows."""
    calls: list[str] = []
    agent = weather_agent(calls, model_settings=agents.ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                                                     temperature=0.0),
                          tool_use_behavior="stop_on_first_tool")
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=3)
    assert len(calls) == 1 and calls[0]
    assert result.final_output == f"sunny, 21 C in {calls[0]}"
