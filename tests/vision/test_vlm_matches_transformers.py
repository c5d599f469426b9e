"""Vision-language chat through the engine equals transformers `generate`, token for token,
on tiny random checkpoints in float32: one image, two images, prefill chunks that split an
image, the same image again (a prefix-cache hit that covers it), different images (no
shared KV past the first image), and Idefics3's tiled images with interleaved markers."""

from __future__ import annotations

import io

import pytest
import torch
from image_server import data_url, png_bytes

from minisgl import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8, ignore_eos=True)


def reference(path: str, parts: list[tuple[str, object]], max_new_tokens: int = 8) -> list[int]:
    """transformers generate on the processor's own inputs for the same conversation."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    content = [{"type": "image"} if kind == "image" else {"type": "text", "text": value} for kind, value in parts]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    images = [Image.open(io.BytesIO(value)).convert("RGB") for kind, value in parts if kind == "image"]
    inputs = processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def messages(parts: list[tuple[str, object]]) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": data_url(value)}} if kind == "image"
               else {"type": "text", "text": value} for kind, value in parts]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def llava(tiny_llava_path):
    # prefill chunks of 8 tokens: every 16-token image is split across chunks
    with LLM(tiny_llava_path, backend="hf", dtype="float32", device="cpu", max_prefill_length=8) as llm:
        yield llm


def test_one_image(llava, tiny_llava_path):
    parts = [("image", png_bytes(0)), ("text", "What is in the picture?")]
    out = llava.chat(messages(parts), GREEDY)
    assert out.outputs[0].token_ids == reference(tiny_llava_path, parts)


def test_two_images_in_one_message(llava, tiny_llava_path):
    parts = [("image", png_bytes(1)), ("text", "and"), ("image", png_bytes(2)), ("text", "what differs?")]
    out = llava.chat(messages(parts), GREEDY)
    assert out.outputs[0].token_ids == reference(tiny_llava_path, parts)


def test_the_same_image_again_is_a_cache_hit_and_a_different_one_is_not(llava, tiny_llava_path):
    llava.flush_cache()
    first = [("image", png_bytes(7)), ("text", "Describe it.")]
    a = llava.chat(messages(first), GREEDY)
    b = llava.chat(messages(first), GREEDY)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids == reference(tiny_llava_path, first)
    image_end = 3 + 16  # "<|im_start|>user\n" then the image's 16 tokens
    assert b.cached_tokens > image_end  # the whole image came from the cache
    other = [("image", png_bytes(8)), ("text", "Describe it.")]
    c = llava.chat(messages(other), GREEDY)
    assert c.cached_tokens < image_end  # the pad ids differ from the first image token on
    assert c.outputs[0].token_ids == reference(tiny_llava_path, other)


def test_text_only_chat_on_a_vision_model(llava, tiny_llava_path):
    parts = [("text", "Hello there, how are you?")]
    assert llava.chat(messages(parts), GREEDY).outputs[0].token_ids == reference(tiny_llava_path, parts)


def test_idefics3_tiles_and_markers(tiny_idefics3_path):
    parts = [("image", png_bytes(4)), ("text", "and"), ("image", png_bytes(5, size=(30, 70))), ("text", "compare")]
    with LLM(tiny_idefics3_path, backend="hf", dtype="float32", device="cpu", max_prefill_length=16) as llm:
        out = llm.chat(messages(parts), GREEDY)
        assert len(out.prompt_token_ids) > 100  # tiles with row/column markers around their image tokens
    assert out.outputs[0].token_ids == reference(tiny_idefics3_path, parts)


def test_encode_chat_refuses_images_it_cannot_return(llava):
    from minisgl.frontend.errors import RequestError

    with pytest.raises(RequestError, match="use LLM.chat"):
        llava.encode_chat(messages([("image", png_bytes(0)), ("text", "hi")]))


def test_a_batch_mixing_text_and_images_survives_retraction(tiny_llava_path):
    """Four conversations at once in a KV pool too small for all of them: requests are
    retracted and readmitted (their images recomputed or found in the cache), and every
    answer still equals transformers'."""
    conversations = [
        [("image", png_bytes(11)), ("text", "What is this?")],
        [("text", "Tell me a story about a small red fox.")],
        [("image", png_bytes(12)), ("text", "and"), ("image", png_bytes(13)), ("text", "which is brighter?")],
        [("image", png_bytes(11)), ("text", "Once more?")],
    ]
    params = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    with LLM(tiny_llava_path, backend="hf", dtype="float32", device="cpu", page_size=4, num_pages=24,
             max_prefill_length=16) as llm:
        outs = llm.chat([messages(c) for c in conversations], params)
        assert llm.metrics()["retractions_total"] > 0
        llm.engine.check_invariants()
    for conv, out in zip(conversations, outs):
        assert out.outputs[0].token_ids == reference(tiny_llava_path, conv, max_new_tokens=24)


def test_images_prepared_in_a_tokenizer_worker_equal_the_server_process(tiny_llava_path):
    """--num-tokenizer: image fetching and preprocessing run in a worker process; the prompt
    and the image tensors that come back are the same as in-process."""
    import asyncio

    from minisgl.frontend.tokenizer import Tokenizer, encode_chat
    from minisgl.frontend.tokenizer_pool import TokenizerPool

    conv = messages([("image", png_bytes(9)), ("text", "What is it?")])
    local = encode_chat(Tokenizer(tiny_llava_path), conv)

    async def in_worker():
        pool = TokenizerPool(Tokenizer(tiny_llava_path), tiny_llava_path, workers=1)
        await pool.start()
        try:
            return await pool.run(encode_chat, conv)
        finally:
            pool.shutdown()

    remote = asyncio.run(in_worker())
    assert remote.ids == local.ids and remote.images == local.images and len(local.images) == 1


def test_a_chat_template_that_drops_image_parts_gets_vlm_image_token(tiny_llava_path):
    """A text-only chat template (it joins text parts, dropping images): VLM_IMAGE_TOKEN is
    written where each image was, then expanded like the model's own image token."""
    from minisgl.frontend.images import ImageRules
    from minisgl.frontend.tokenizer import Tokenizer, encode_chat
    from minisgl.models.tokenizer_builder import CHATML_TEMPLATE

    tok = Tokenizer(tiny_llava_path)
    conv = messages([("image", png_bytes(3)), ("text", "What is it?")])
    own = encode_chat(tok, conv)
    tok.tokenizer.chat_template = CHATML_TEMPLATE
    tok._templates = tok.tokenizer
    fallback = encode_chat(tok, conv, image_rules=ImageRules(placeholder="[IMG]"))
    assert fallback.ids == own.ids and fallback.images == own.images
    assert sum(t == own.images[0].pad_id for t in own.ids) == 16
