import random

import pytest
from transformers import AutoTokenizer

from minisgl.frontend.detokenizer import IncrementalDetokenizer


def stream(tok, ids, stop=()):
    d = IncrementalDetokenizer(tok, stop=stop)
    parts, hit = [], False
    for t in ids:
        text, hit = d.push([t])
        parts.append(text)
        if hit:
            break
    if not hit:
        parts.append(d.finish())
    return parts, hit


def test_multibyte_utf8_never_split(tiny_qwen3_path):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_path)
    text = "héllo 世界 🙂 ok"
    ids = tok(text, add_special_tokens=False).input_ids
    parts, _ = stream(tok, ids)
    assert "".join(parts) == tok.decode(ids)
    assert all("\ufffd" not in p for p in parts)


def test_stop_string_across_tokens_never_leaks(tiny_qwen3_path):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_path)
    ids = tok("The answer is STOP here and more", add_special_tokens=False).input_ids
    parts, hit = stream(tok, ids, stop=["STOP"])
    assert hit and "".join(parts) == "The answer is "
    assert not any("S" in p for p in parts)
    # a partial match that never completes is released at the end
    parts, hit = stream(tok, tok("ends with ST", add_special_tokens=False).input_ids, stop=["STOP"])
    assert not hit and "".join(parts) == "ends with ST"


@pytest.mark.parametrize("path", ["tiny_qwen3_path", "tiny_llama_path", "smollm2_path"])
@pytest.mark.parametrize("way", ["decode stream", "re-decoded window"])
@pytest.mark.parametrize("most", [1, 5])  # tokens a push: several when a step keeps drafted tokens
def test_random_token_streams_add_up_to_the_full_decode(request, path, way, most):
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(path))
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 40))]
        d = IncrementalDetokenizer(tok)
        assert d._stream is not None  # these tokenizers have a Rust backend and no clean-up
        if way == "re-decoded window":
            d._stream = None
        pushes, i = [], 0
        while i < len(ids):
            n = rng.randint(1, most)
            pushes.append(ids[i : i + n])
            i += n
        text = "".join(d.push(p)[0] for p in pushes) + d.finish()
        assert text == tok.decode(ids, skip_special_tokens=True), ids
