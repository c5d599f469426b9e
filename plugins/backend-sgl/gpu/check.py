"""GPU correctness check of backend-sgl's runner against transformers on the same random weights.

For Qwen3 and Llama shapes, in float32 and bfloat16: builds a transformers model from a
config with a fixed seed, saves it, loads it through `SglModelRunner` (safetensors streaming,
Triton kernels, CUDA graphs), and compares:
  - prefill logits of a batch of prompts (every row),
  - chunked prefill over a cached prefix mixed with fresh prompts,
  - decode logits, CUDA graph vs eager vs transformers,
  - greedy tokens over many steps for a batch of requests of different lengths.
Errors are ||ours - ref|| / ||ref|| against transformers in float32 (the "gold").

    PYTHONPATH=core/src:plugins/backend-sgl/src:plugins/backend-sgl/tests python plugins/backend-sgl/gpu/check.py
"""

from __future__ import annotations

import logging
import sys
import time

import torch
from batches import SlotPlanner, make_batch  # plugins/backend-sgl/tests

from minisgl.settings import settings_from_kwargs
from minisgl_backend_sgl.runner import SglModelRunner

torch.backends.cuda.matmul.allow_tf32 = False
FAILURES: list[str] = []


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def check(name: str, value: float, limit: float) -> None:
    ok = value <= limit
    print(f"  {'ok  ' if ok else 'FAIL'} {name}: {value:.2e} (limit {limit:.0e})", flush=True)
    if not ok:
        FAILURES.append(name)


def make_config(arch: str):
    from transformers import LlamaConfig, Qwen3Config

    if arch == "qwen3":  # Qwen3-style: head_dim 128, q/k norm, tied embeddings
        return Qwen3Config(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=128, max_position_embeddings=4096,
                           tie_word_embeddings=True, rope_theta=1_000_000.0, eos_token_id=2)
    # SmolLM2/Llama-3-style: head_dim 64, GQA 9/3, llama3 rope scaling, separate lm_head
    return LlamaConfig(vocab_size=1024, hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=4096,
                       tie_word_embeddings=False, eos_token_id=2,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 1024})


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids], device="cuda")).logits[0].float()


def run_arch(arch: str) -> None:
    from transformers import AutoModelForCausalLM

    config = make_config(arch)
    torch.manual_seed(0)
    gold = AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda().eval()
    # scale weights up a little so logits are not all near-ties
    with torch.no_grad():
        for p in gold.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    path = f"/tmp/sgl_check_{arch}"
    gold.save_pretrained(path)
    gen = torch.Generator().manual_seed(1)
    V = config.vocab_size
    prompts = {rid: torch.randint(3, V, (n,), generator=gen).tolist() for rid, n in enumerate((37, 5, 300, 64, 129, 1, 17, 250))}

    for dtype_name, limit in (("float32", 1e-4), ("bfloat16", 3e-2)):
        print(f"[{arch} {dtype_name}]", flush=True)
        settings = settings_from_kwargs(dtype=dtype_name, num_pages=8192, cuda_graph_max_bs=16, max_running_requests=16)
        runner = SglModelRunner(settings, path, dummy=False)
        planner = SlotPlanner(runner.kv_capacity(), seed=2)
        # 1) prefill of 3 prompts, every row's logits
        batch = make_batch(planner, [(r, prompts[r]) for r in (1, 2, 3)], device="cuda", sample_all_rows=True)
        ours = runner.logits(batch)
        ref = torch.cat([hf_logits(gold, prompts[r]) for r in (1, 2, 3)])
        check("prefill logits", rel(ours, ref), limit)
        # 2) chunked prefill: request 0 (prefix 20 cached) with fresh requests 4 and 5
        runner.logits(make_batch(planner, [(0, prompts[0][:20])], device="cuda"))
        batch = make_batch(planner, [(0, prompts[0][20:]), (4, prompts[4]), (5, prompts[5])], device="cuda", sample_all_rows=True)
        ours = runner.logits(batch)
        ref = torch.cat([hf_logits(gold, prompts[0])[20:], hf_logits(gold, prompts[4]), hf_logits(gold, prompts[5])])
        check("chunked prefill with prefix", rel(ours, ref), limit)
        runner.logits(make_batch(planner, [(r, prompts[r]) for r in (6, 7)], device="cuda"))
        # 3) greedy decode of 8 requests of different lengths; graph vs eager on the way
        seqs = {r: list(p) for r, p in prompts.items()}
        pending = {}
        for r in seqs:
            last = hf_logits(gold, seqs[r])[-1].argmax().item()
            pending[r] = last
        steps, graph_vs_eager = 48, 0.0
        t0 = time.perf_counter()
        for step in range(steps):
            batch = make_batch(planner, [(r, [pending[r]]) for r in seqs], device="cuda")
            for r in seqs:
                seqs[r].append(pending[r])
            if step in (0, steps // 2):
                graph_logits = runner.logits(batch).clone()
                graphs, runner.graphs = runner.graphs, None
                eager_logits = runner.logits(batch)
                runner.graphs = graphs
                graph_vs_eager = max(graph_vs_eager, rel(graph_logits, eager_logits))
                ref = torch.stack([hf_logits(gold, seqs[r])[-1] for r in seqs])
                check(f"decode logits step {step} (graph)", rel(graph_logits, ref), limit)
            result = runner.forward(batch).resolve()
            for r, tok in zip(seqs, result.next_tokens.tolist(), strict=False):
                pending[r] = tok
        print(f"  decode {steps} steps x 8 requests in {time.perf_counter() - t0:.2f} s", flush=True)
        check("graph vs eager decode logits", graph_vs_eager, 1e-6 if dtype_name == "float32" else 1e-2)
        # greedy agreement with transformers (float32 gold) over the generated tokens
        matched = total = 0
        first_div = []
        for r, p in prompts.items():
            ours_tokens = seqs[r][len(p):] + [pending[r]]
            with torch.no_grad():
                hf_out = gold.generate(torch.tensor([p], device="cuda"), max_new_tokens=len(ours_tokens), do_sample=False,
                                       min_new_tokens=len(ours_tokens), pad_token_id=0)[0, len(p):].tolist()
            same = next((i for i, (a, b) in enumerate(zip(ours_tokens, hf_out, strict=False)) if a != b), len(ours_tokens))
            first_div.append(same)
            matched += same
            total += len(ours_tokens)
        print(f"  greedy: {matched}/{total} tokens identical before the first divergence; per request {first_div}", flush=True)
        if dtype_name == "float32" and matched < total:
            print("  note: float32 divergence (check for near-ties)", flush=True)
            if matched < 0.9 * total:
                FAILURES.append(f"{arch} float32 greedy agreement {matched}/{total}")
        runner.shutdown()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for arch in ("qwen3", "llama"):
        run_arch(arch)
    print("CHECK FAILURES:", FAILURES or "none", flush=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
