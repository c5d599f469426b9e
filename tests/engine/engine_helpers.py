"""Engine-test helpers: build engines on the real backend-hf runner, step them to idle."""

from __future__ import annotations


def make_engine(model_path: str, **settings):
    from minisgl.engine.engine import Engine
    from minisgl.settings import settings_from_kwargs

    settings.setdefault("dtype", "float32")
    settings.setdefault("backend", "hf")
    return Engine(settings_from_kwargs(model=model_path, **settings))


def run_all(engine, check: bool = True) -> dict[str, list]:
    """Step until idle; returns rid -> list of outputs; checks the pool after every step."""
    outs: dict[str, list] = {}
    while engine.has_work():
        for o in engine.step():
            outs.setdefault(o.rid, []).append(o)
        if check:
            engine.check_invariants()
    return outs


def tokens(outs: list) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


GREEDY = dict(temperature=0.0, ignore_eos=True)


def reference(model, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy continuation of `prompt`, exactly n tokens."""
    import torch

    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Random prompts of the given lengths, clear of the special ids at both ends."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab - 5, (n,), generator=g).tolist() for n in lengths]
