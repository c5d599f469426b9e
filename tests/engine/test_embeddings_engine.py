"""Pooling requests (embeddings) inside the engine: prefill-only requests that share steps,
chunks, the KV pool and retraction with generations, and come back with the final hidden
states of their prompt pooled exactly as transformers computes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import GREEDY, make_engine, prompts, reference, run_all, tokens
from oracle_runner import OracleRunner
from transformers import AutoModelForCausalLM

from minisgl.engine.engine import Engine
from minisgl.engine.messages import EngineRequest
from minisgl.sampling_params import SamplingParams
from minisgl.settings import settings_from_kwargs

EMBED = SamplingParams(max_new_tokens=0, temperature=0.0)


@pytest.fixture(scope="module")
def hf_model(tiny_llama_path):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()


def final_hidden(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].numpy()


def vector(out) -> np.ndarray:
    assert out.finished and out.finish_reason == "stop" and out.embedding is not None, out
    return np.frombuffer(out.embedding, dtype="<f4")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooled_hidden_states_match_transformers_beside_generations(tiny_llama_path, hf_model, pooling):
    """Prompts longer than a chunk, a pool small enough to retract, generations in the same
    steps and a generation that put the embedded prompt's prefix in the cache first: every
    embedding is transformers' own, and every page comes back."""
    engine = make_engine(tiny_llama_path, max_prefill_length=8, page_size=4, num_pages=14, max_running_requests=4)
    try:
        vocab = engine.runner.vocab_size
        gen_prompts = prompts(vocab, [10, 7, 12], seed=1)
        embed_prompts = prompts(vocab, [21, 5, 1], seed=2) + [gen_prompts[0] + [7, 8, 9]]
        engine.add_request(EngineRequest(rid="warm", input_ids=gen_prompts[0], sampling=SamplingParams(
            max_new_tokens=4, **GREEDY)))
        run_all(engine)  # gen_prompts[0] is now a cached prefix of the last embedded prompt
        for i, ids in enumerate(gen_prompts):
            engine.add_request(EngineRequest(rid=f"g{i}", input_ids=ids, sampling=SamplingParams(
                max_new_tokens=20, **GREEDY)))
        for i, ids in enumerate(embed_prompts):
            engine.add_request(EngineRequest(rid=f"e{i}", input_ids=ids, sampling=EMBED, pooling=pooling))
        outs = run_all(engine)
        for i, ids in enumerate(embed_prompts):
            (out,) = outs[f"e{i}"]
            hidden = final_hidden(hf_model, ids)
            want = hidden[-1] if pooling == "last" else hidden.mean(0)
            assert out.prompt_tokens == len(ids) and not out.new_token_ids
            np.testing.assert_allclose(vector(out), want, rtol=1e-4, atol=1e-4)
        for i, ids in enumerate(gen_prompts):
            assert tokens(outs[f"g{i}"]) == reference(hf_model, ids, 20)
        metrics = engine.metrics()
        assert metrics["retractions_total"] > 0  # the pool was short: the newest (embeddings) were requeued
        assert metrics["kv_used_tokens"] == 0 and metrics["num_running_reqs"] == 0
        assert metrics["prompt_tokens_total"] >= sum(map(len, embed_prompts))
    finally:
        engine.shutdown()


def test_a_runner_without_embeddings_refuses_pooling_requests_by_name(tiny_llama_path):
    engine = Engine(settings_from_kwargs(model=tiny_llama_path, device="cpu"),
                    runner=OracleRunner(tiny_llama_path, kv_slots=64))
    try:
        engine.add_request(EngineRequest(rid="e", input_ids=[5, 6, 7], sampling=EMBED, pooling="last"))
        (out,) = run_all(engine)["e"]
        assert out.finish_reason == "error" and out.error_kind == "invalid_request"
        assert "backend OracleRunner does not compute embeddings" in out.error
    finally:
        engine.shutdown()


def test_llm_embed_is_the_same_request_layer(tiny_llama_path, hf_model):
    from minisgl import LLM
    from minisgl.frontend.errors import RequestError

    texts = ["The quick brown fox", "jumps over the lazy dog"]
    with LLM(tiny_llama_path, dtype="float32", backend="hf") as llm:
        last = llm.embed(texts)
        mean = llm.embed(texts[0], pooling="mean", normalize=False)
        ids = [llm.tokenizer(t)["input_ids"] for t in texts]
        with pytest.raises(RequestError, match="pooling") as bad:
            llm.embed(texts, pooling="cls")
        assert bad.value.param == "pooling"
        with pytest.raises(RequestError) as empty:
            llm.embed([])
        assert empty.value.param == "prompts"
    for got, prompt in zip(last, ids, strict=True):
        want = final_hidden(hf_model, prompt)[-1]
        np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean[0], final_hidden(hf_model, ids[0]).mean(0), rtol=1e-4, atol=1e-5)


def test_the_request_layer_names_a_backend_without_embeddings_and_a_wrong_dimensions(tiny_llama_path):
    from minisgl.frontend.errors import RequestError
    from minisgl.frontend.generation import Frontend
    from minisgl.frontend.tokenizer import Tokenizer

    def frontend(embedding_size: int) -> Frontend:
        return Frontend(Tokenizer(tiny_llama_path), max_context_len=32, eos_token_ids=[0], max_new_tokens_default=8,
                        embedding_size=embedding_size)

    with pytest.raises(RequestError, match="backend sgl does not compute embeddings") as no_backend:
        frontend(0).embedding("r", [[5, 6]], "last", backend="sgl")
    assert no_backend.value.param == "model"
    with pytest.raises(RequestError, match="embedding size, 64") as dims:
        frontend(64).embedding("r", [[5, 6]], "last", dimensions=32)
    assert dims.value.param == "dimensions"
    with pytest.raises(RequestError) as too_long:
        frontend(64).embedding("r", [[5] * 33], "mean", names={"prompt": "input"})
    assert too_long.value.kind.value == "context_length_exceeded" and too_long.value.param == "input"
    fits = frontend(64).embedding("r", [[5] * 32], "mean")  # the whole context: nothing is generated
    assert [er.pooling for er in fits.engine_requests()] == ["mean"]
