"""Test helpers: tiny random transformers models, built offline in about a second.

`make_tiny_model(tmp_path / "tiny", arch="qwen3")` returns a directory that
`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load offline.

The model is random (deterministic for a seed); the tokenizer is real enough for tests: a
byte-level BPE trained in memory on a small English corpus (any text round-trips, common
words are single tokens) with ChatML special tokens and chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from .models.tokenizer_builder import (
    END_OF_TEXT,
    IM_END,
    build_byte_level_tokenizer,
    save_hf_tokenizer,
)

TinyArch = Literal["qwen3", "llama", "qwen3_moe"]
TINY_ARCHS: tuple[str, ...] = ("qwen3", "llama", "qwen3_moe")


def _config(
    arch: str,
    *,
    vocab_size: int,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    dtype: torch.dtype,
):
    from transformers import LlamaConfig, Qwen3Config, Qwen3MoeConfig

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=4096,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype=dtype,
    )
    if arch == "qwen3":  # like the small Qwen3 models: tied embeddings, q/k norms
        return Qwen3Config(**common, tie_word_embeddings=True, rope_theta=1_000_000.0)
    if arch == "llama":  # like Llama 3: separate lm_head
        return LlamaConfig(**common, tie_word_embeddings=False, rope_theta=500_000.0)
    if arch == "qwen3_moe":  # like Qwen3-30B-A3B: 8 experts of which 2 route per token, renormalised; layer 0 dense
        return Qwen3MoeConfig(**common, tie_word_embeddings=False, rope_theta=1_000_000.0, num_experts=8,
                              num_experts_per_tok=2, moe_intermediate_size=hidden_size // 2, norm_topk_prob=True,
                              mlp_only_layers=[0] if num_layers > 1 else [])
    raise ValueError(f"arch={arch!r}: expected one of {', '.join(TINY_ARCHS)}")


def make_tiny_model(
    path: str | Path,
    arch: TinyArch = "qwen3",
    *,
    vocab_size: int | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
) -> str:
    """Write a tiny random `arch` model with a working tokenizer into `path`; return the path.

    `vocab_size=None` sizes the vocabulary to the trained tokenizer (about a thousand
    tokens); a larger value pads it with filler tokens. The same seed gives the same weights.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_byte_level_tokenizer(vocab_size)
    vocab = tokenizer.get_vocab_size()
    bos_id = pad_id = tokenizer.token_to_id(END_OF_TEXT)
    eos_id = tokenizer.token_to_id(IM_END)
    config = _config(
        arch,
        vocab_size=vocab,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        dtype=dtype,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(str(out))
    save_hf_tokenizer(tokenizer, out, bos_token=END_OF_TEXT, eos_token=IM_END, pad_token=END_OF_TEXT)
    return str(out)


IMAGE_TOKEN = "<image>"
TinyVisionArch = Literal["llava", "idefics3"]
# ChatML with image parts: each image is written as the image token
VISION_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>\n{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_vlm(path: str | Path, arch: TinyVisionArch = "llava", *, seed: int = 0) -> str:
    """Write a tiny random vision-language model (config, processor with chat template,
    weights) into `path` with `save_pretrained`; return the path. 32x32 images: LLaVA makes
    16 image tokens of one, Idefics3 tiles it and interleaves tile markers."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from .models.tokenizer_builder import DEFAULT_SPECIAL_TOKENS

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    extra = [IMAGE_TOKEN] + (["<fake_token_around_image>", "<global-img>"] if arch == "idefics3" else [])
    tokenizer = build_byte_level_tokenizer(None, {**DEFAULT_SPECIAL_TOKENS, **dict.fromkeys(extra)})
    bos_id, eos_id = tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id(IM_END)
    image_id = tokenizer.token_to_id(IMAGE_TOKEN)
    text = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                       bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=bos_id, tie_word_embeddings=False)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=IM_END,
                                     pad_token=END_OF_TEXT, clean_up_tokenization_spaces=False, model_max_length=1 << 30)
    if arch == "llava":
        config = LlavaConfig(vision_config=CLIPVisionConfig(**vision, projection_dim=32), text_config=text,
                             image_token_id=image_id, vision_feature_layer=-2,
                             vision_feature_select_strategy="default")
        model_cls = LlavaForConditionalGeneration
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
            tokenizer=hf_tok, patch_size=8, vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
            num_additional_image_tokens=1, chat_template=VISION_CHAT_TEMPLATE)
    elif arch == "idefics3":
        config = Idefics3Config(vision_config=Idefics3VisionConfig(**vision).to_dict(), text_config=text.to_dict(),
                                image_token_id=image_id, scale_factor=2)
        model_cls = Idefics3ForConditionalGeneration
        processor = Idefics3Processor(
            image_processor=Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}),
            tokenizer=hf_tok, image_seq_len=4, chat_template=VISION_CHAT_TEMPLATE)
    else:
        raise ValueError(f"arch={arch!r}: expected llava or idefics3")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=bos_id)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return str(out)
