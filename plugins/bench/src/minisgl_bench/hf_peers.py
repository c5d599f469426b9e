"""The transformers peers every benchmark measures minisgl against, on the same model, dtype
and device:
- `hf-sequential`: `model.generate` one request after another;
- `hf-streaming`: the original mini-sglang's baseline, BENCH_HF_CONCURRENCY threads each running
  `generate` with a TextIteratorStreamer (default 1);
- `hf-cb`: transformers' own continuous batching (`init_continuous_batching`, sdpa
  attention, per-request max_new_tokens, KV blocks sized to the workload).
"""

from __future__ import annotations

import threading
from typing import Any

from .offline import Result, Workload, timed

PEERS = ("hf-sequential", "hf-streaming", "hf-cb")


def hf_device() -> str:
    """The peers run where minisgl's auto backend would: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_hf(path: str, dtype: str, attn: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    kwargs = {"dtype": torch_dtype}
    if attn:
        kwargs["attn_implementation"] = attn
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).to(hf_device()).eval()


def run_hf_sequential(path: str, dtype: str, wl: Workload) -> Result:
    import torch

    model = load_hf(path, dtype)

    def go() -> int:
        total = 0
        with torch.inference_mode():
            for ids, n in zip(wl.prompts, wl.output_lens):
                out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=n, min_new_tokens=n, do_sample=False)
                total += out.shape[1] - len(ids)
        return total

    model.generate(torch.tensor([wl.prompts[0][:16]], device=model.device), max_new_tokens=2, do_sample=False)
    return timed(go, "hf-sequential")


def run_hf_streaming(path: str, dtype: str, wl: Workload, concurrency: int) -> Result:
    from transformers import AutoTokenizer

    return hf_streaming(load_hf(path, dtype), AutoTokenizer.from_pretrained(path), wl, concurrency)


def hf_streaming(model: Any, tokenizer: Any, wl: Workload, concurrency: int, name: str | None = None) -> Result:
    """The original mini-sglang's baseline: threads each running generate() with a TextIteratorStreamer."""
    import torch
    from transformers import TextIteratorStreamer

    work = list(zip(wl.prompts, wl.output_lens))
    lock = threading.Lock()
    produced = [0]

    def one(ids: list[int], n: int) -> None:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        kwargs = dict(input_ids=torch.tensor([ids], device=model.device), max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
        failed: list[BaseException] = []

        def generate() -> None:
            try:
                model.generate(**kwargs)
            except BaseException as exc:  # end the stream, or the reader below waits forever
                failed.append(exc)
                streamer.end()

        t = threading.Thread(target=generate)
        t.start()
        for _ in streamer:
            pass
        t.join()
        if failed:
            raise failed[0]
        with lock:
            produced[0] += n

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                ids, n = work.pop(0)
            one(ids, n)

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:
            errors.append(exc)

    def go() -> int:
        threads = [threading.Thread(target=guarded) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return produced[0]

    # cuDNN's fused attention fails under concurrent generate() threads on CUDA
    # ("mha_graph.execute ... is_good()"; BENCHMARKS.md): use the other SDPA kernels
    cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        return timed(go, name or f"hf-streaming(x{concurrency})")
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)


def run_hf_cb(path: str, dtype: str, wl: Workload) -> Result:
    """transformers' continuous batching, its paged KV sized to hold the whole workload."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:  # older transformers: no hints, the KV size comes from num_blocks alone
        WorkloadHints = None

    model = load_hf(path, dtype, attn="sdpa")
    page = 32
    blocks = sum(-(-(len(p) + n) // page) for p, n in zip(wl.prompts, wl.output_lens)) + 8
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(wl.output_lens), eos_token_id=-1, pad_token_id=0)
    try:
        cb = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=512)
    except TypeError:  # transformers before 5.2x names the page `block_size`
        cb = ContinuousBatchingConfig(block_size=page, num_blocks=blocks, max_batch_tokens=512)
    extra = {}
    if WorkloadHints is not None:
        extra["workload_hints"] = WorkloadHints(
            max_prompt_length=max(map(len, wl.prompts)), max_generated_length=max(wl.output_lens), num_requests=len(wl.prompts)
        )
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb, **extra)
    manager.start()
    try:

        def go() -> int:
            ids = [manager.add_request(p, max_new_tokens=n) for p, n in zip(wl.prompts, wl.output_lens)]
            pending, total = set(ids), 0
            while pending:
                res = manager.get_result(timeout=1.0)
                if res is None:
                    if not manager.is_running():
                        raise RuntimeError("transformers continuous batching stopped early")
                    continue
                if res.is_finished() and res.request_id in pending:
                    pending.discard(res.request_id)
                    total += len(res.generated_tokens)
            return total

        return timed(go, "hf-cb")
    finally:
        manager.stop(block=True)


