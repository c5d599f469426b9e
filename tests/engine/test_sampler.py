import torch

from minisgl.engine.batch import SamplingBatch
from minisgl.engine.sampler import sample, seeded_uniform


def batch(S, **kw):
    d = dict(
        temperature=torch.ones(S), top_p=torch.ones(S), top_k=torch.zeros(S, dtype=torch.long),
        min_p=torch.zeros(S), repetition_penalty=torch.ones(S), frequency_penalty=torch.zeros(S),
        presence_penalty=torch.zeros(S), seeds=torch.full((S,), -1, dtype=torch.long),
        steps=torch.zeros(S, dtype=torch.long), all_greedy=False,
    )
    d.update(kw)
    return SamplingBatch(**d)


def test_greedy_fast_path_is_argmax():
    logits = torch.randn(5, 100)
    assert sample(logits, batch(5, all_greedy=True, temperature=torch.zeros(5))).next_tokens.tolist() == logits.argmax(1).tolist()


def test_mixed_greedy_and_sampled_rows():
    logits = torch.randn(4, 100)
    out = sample(logits, batch(4, temperature=torch.tensor([0.0, 1.0, 0.0, 1.0]))).next_tokens
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_seeded_rows_reproducible_and_independent_of_batch():
    logits = torch.randn(3, 1000)
    a = sample(logits, batch(3, seeds=torch.tensor([7, 8, 9]), steps=torch.tensor([0, 0, 5]))).next_tokens
    b = sample(logits[[2]], batch(1, seeds=torch.tensor([9]), steps=torch.tensor([5]))).next_tokens
    assert a[2] == b[0]
    c = sample(logits, batch(3, seeds=torch.tensor([7, 8, 9]), steps=torch.tensor([0, 0, 5]))).next_tokens
    assert a.tolist() == c.tolist()
    draws = {int(sample(logits[[0]], batch(1, seeds=torch.tensor([s]))).next_tokens) for s in range(20)}
    assert len(draws) > 5


def test_seeded_uniform_is_uniform():
    u = seeded_uniform(torch.tensor([3]), torch.tensor([1]), 200_000)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_sampling_matches_softmax():
    n = 20_000
    logits = torch.tensor([[0.0, 1.0, 2.0]]).repeat(n, 1)
    t = sample(logits, batch(n, seeds=torch.arange(n), temperature=torch.full((n,), 2.0))).next_tokens
    freq = torch.bincount(t, minlength=3) / n
    assert torch.allclose(freq, (logits[0] / 2).softmax(0), atol=0.02)


def test_top_k_top_p_min_p():
    logits = torch.tensor([[5.0, 4.0, 3.0, -10.0, -10.0]]).repeat(300, 1)
    seeds = torch.arange(300)
    k2 = sample(logits, batch(300, seeds=seeds, top_k=torch.full((300,), 2))).next_tokens
    assert set(k2.tolist()) == {0, 1}
    p = sample(logits, batch(300, seeds=seeds, top_p=torch.full((300,), 0.5))).next_tokens
    assert set(p.tolist()) == {0}
    mp = sample(logits, batch(300, seeds=seeds, min_p=torch.full((300,), 0.3))).next_tokens
    assert set(mp.tolist()) == {0, 1}


def test_penalties_and_min_new_tokens():
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    hist = torch.tensor([[0, 0, -1]])
    out = sample(logits, batch(1, all_greedy=True, temperature=torch.zeros(1), history=hist, needs_penalties=True,
                               repetition_penalty=torch.tensor([2.0]))).next_tokens
    assert out.item() == 1  # 3/2 < 2
    out = sample(logits, batch(1, all_greedy=True, temperature=torch.zeros(1), history=hist, needs_penalties=True,
                               frequency_penalty=torch.tensor([0.8]))).next_tokens
    assert out.item() == 1  # 3 - 1.6 < 2
    out = sample(logits, batch(1, all_greedy=True, temperature=torch.zeros(1), min_new_tokens_mask=torch.tensor([True]),
                               stop_token_ids=torch.tensor([[0, -1]]))).next_tokens
    assert out.item() == 1


def test_logprobs_are_raw_model_distribution():
    logits = torch.randn(2, 50)
    sb = batch(2, all_greedy=True, temperature=torch.zeros(2), want_logprobs=True, top_logprobs=3)
    r = sample(logits, sb)
    ref = logits.log_softmax(1)
    assert torch.allclose(r.logprobs, ref.gather(1, r.next_tokens[:, None]).squeeze(1))
    assert r.top_logprob_ids[:, 0].tolist() == logits.argmax(1).tolist()


def test_a_token_with_minus_infinity_is_never_drawn_whatever_the_seed():
    # 64 rows x 12 steps x 49,152 tokens: about 38M seeded uniforms, among which a uniform
    # equal to 1.0 (Gumbel noise +inf) would draw its token whatever its logit
    rows, vocab = 64, 49_152
    logits = torch.full((rows, vocab), float("-inf"))
    logits[:, 5] = 0.0
    for step in range(12):
        out = sample(logits, batch(rows, seeds=torch.arange(rows), steps=torch.full((rows,), step))).next_tokens
        assert out.tolist() == [5] * rows, step


def test_host_flags_draw_what_the_tensors_say():
    """The scheduler tells the sampler which filters and seeds rows use (so it never asks the
    device); the draws equal those of a sampler that reads the tensors, and a flag that says
    "none" where the tensors say "some" really skips that filter."""
    logits = torch.randn(4, 500)
    rows = dict(seeds=torch.tensor([3, 4, 5, 6]), top_k=torch.tensor([0, 20, 0, 5]),
                top_p=torch.tensor([1.0, 1.0, 0.8, 1.0]), min_p=torch.tensor([0.0, 0.0, 0.0, 0.1]))
    derived = sample(logits, batch(4, **rows)).next_tokens
    told = sample(logits, batch(4, **rows, top_k_max=20, any_top_p=True, any_min_p=True, any_seeded=True)).next_tokens
    assert told.tolist() == derived.tolist()
    only_k = dict(seeds=torch.tensor([1, 2, 3, 4]), top_k=torch.tensor([2, 2, 2, 2]))
    skipped = sample(logits, batch(4, **only_k, top_k_max=0, any_seeded=True)).next_tokens
    assert skipped.tolist() == sample(logits, batch(4, seeds=only_k["seeds"])).next_tokens.tolist()


def test_a_grammar_mask_holds_in_the_one_pass_draw_and_under_filters():
    """Without filters the draw applies the bitmask itself; with top-k or top-p the sampler
    masks the whole logits first. Either way a seeded row draws only allowed tokens, the same
    as unconstrained whenever its unconstrained draw was allowed, and greedy rows take the
    allowed argmax."""
    from concurrent.futures import Future

    vocab, rows = 256, 4
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3
    words = torch.zeros(rows, vocab // 32, dtype=torch.int32)
    words[:, 1::2] = -1  # tokens 32-63, 96-127, ... allowed
    allowed = ((torch.arange(vocab) // 32) % 2 == 1).expand(rows, vocab)
    filled = Future()
    filled.set_result(words)
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.3])
    for filters in ({}, {"top_k": torch.full((rows,), 40)}, {"top_p": torch.full((rows,), 0.9)}):
        for seed in range(12):
            kw = dict(temperature=temperature, seeds=torch.full((rows,), seed), **filters)
            got = sample(logits, batch(rows, vocab_mask=filled, **kw)).next_tokens
            assert bool(allowed.gather(1, got[:, None]).all())
            assert int(got[0]) == int(logits[0].masked_fill(~allowed[0], float("-inf")).argmax())
            free = sample(logits, batch(rows, **kw)).next_tokens
            if not filters:  # the same noise: an allowed unconstrained draw stays the draw
                keep = allowed.gather(1, free[:, None]).squeeze(1)
                assert got[keep].tolist() == free[keep].tolist()


def test_logit_bias_forces_or_bans_a_token_per_row():
    logits = torch.randn(3, 50)
    top = logits.argmax(1)
    # row 0: +100 on token 7; row 1: -100 on its argmax; row 2: no bias (padding only)
    ids = torch.tensor([[7, -1], [int(top[1]), -1], [-1, -1]])
    bias = torch.tensor([[100.0, 0.0], [-100.0, 0.0], [0.0, 0.0]])
    greedy = sample(logits, batch(3, all_greedy=True, temperature=torch.zeros(3), want_logprobs=True,
                                  logit_bias_ids=ids, logit_bias=bias))
    assert greedy.next_tokens[0] == 7 and greedy.next_tokens[1] != top[1] and greedy.next_tokens[2] == top[2]
    # logprobs stay the model's own, before the bias
    assert torch.allclose(greedy.logprobs[0], logits.log_softmax(1)[0, 7])
    for top_k in (0, 5):  # sampled rows, in the one-pass draw and under the filters
        drawn = sample(logits, batch(3, seeds=torch.tensor([1, 2, 3]), top_k=torch.full((3,), top_k),
                                     logit_bias_ids=ids, logit_bias=bias)).next_tokens
        assert drawn[0] == 7 and drawn[1] != top[1]
