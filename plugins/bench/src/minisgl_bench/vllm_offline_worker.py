"""Run one workload through vLLM's offline API and print the timing as JSON (one line).

Runs inside vLLM's own virtual environment (`python vllm_offline_worker.py IN.json`), so it
imports nothing of minisgl. IN.json: {"model", "dtype", "prompts": [[ids]], "output_lens",
"max_model_len", "memory_fraction"}."""

import json
import sys
import time


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model"], dtype=spec["dtype"], max_model_len=spec["max_model_len"], seed=0,
              gpu_memory_utilization=spec["memory_fraction"])
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in spec["output_lens"]]
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    import vllm

    print("VLLM_RESULT " + json.dumps({"seconds": seconds, "output_tokens": tokens, "version": vllm.__version__}))


if __name__ == "__main__":
    main()
