"""Images into prompts, for vision-language models: the model's transformers processor, run
one image at a time.

The chat template writes one image token where each image goes. `VisionProcessor.splice`
replaces each by what the processor expands it to for that image (LLaVA: as many image
tokens as the vision tower yields patches; Idefics3: tile markers around runs of image
tokens), with the image tokens turned into the image's pad id (see
minisgl.engine.messages), and returns the processor's tensors beside it. An image is
processed once: the result is cached by the hash of its encoded bytes, so a conversation
that sends the same image again costs a lookup here and a prefix-cache hit in the engine.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from ..engine.messages import IMAGE_PAD_BASE, ImageInput, TensorData
from .errors import invalid
from .images import ImageRules, decode_image

PROCESSED_CACHE_SIZE = 64  # images whose processor outputs are kept


class VisionProcessor:
    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.image_token: str | None = getattr(processor, "image_token", None)
        if not self.image_token:
            raise ValueError(f"{type(processor).__name__} names no image token, so images cannot be placed")
        self.image_token_id = int(processor.tokenizer.convert_tokens_to_ids(self.image_token))
        self._processed: OrderedDict[bytes, tuple[list[int], list[TensorData], int]] = OrderedDict()
        self._lock = threading.Lock()  # tokenizer jobs run in threads

    def _process(self, data: bytes, rules: ImageRules, param: str) -> tuple[list[int], list[TensorData], int]:
        """The image token's expansion for this image, the processor's tensors, the pad id."""
        key = hashlib.sha256(data).digest()
        with self._lock:
            hit = self._processed.get(key)
            if hit is not None:
                self._processed.move_to_end(key)
                return hit
        image = decode_image(data, rules, param)
        try:
            out = self.processor(text=self.image_token, images=[image], return_tensors="pt", add_special_tokens=False)
        except Exception as exc:  # a processor refusing an image (too small, odd mode) is about that image
            raise invalid(f"'{param}': the model's processor refused the image: {type(exc).__name__}: {exc}",
                          param) from None
        expansion = [int(t) for t in out.pop("input_ids")[0].tolist()]
        tensors = [TensorData.of(k, v) for k, v in out.items() if k != "attention_mask" and hasattr(v, "dtype")]
        digest = hashlib.sha256()
        for t in tensors:
            digest.update(t.name.encode())
            digest.update(t.data)
        pad_id = IMAGE_PAD_BASE + int.from_bytes(digest.digest()[:5], "big")
        result = (expansion, tensors, pad_id)
        with self._lock:
            self._processed[key] = result
            while len(self._processed) > PROCESSED_CACHE_SIZE:
                self._processed.popitem(last=False)
        return result

    def splice(self, ids: list[int], images: list[tuple[bytes, str]], rules: ImageRules) -> tuple[list[int], list[ImageInput]]:
        """Expand the prompt's image tokens, one per image in order ((encoded bytes, param))."""
        marks = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(marks) != len(images):
            raise invalid(f"the prompt holds {len(marks)} image tokens ({self.image_token}) for {len(images)} images; "
                          f"write no {self.image_token} in text parts", "messages")
        out: list[int] = []
        inputs: list[ImageInput] = []
        prev = 0
        for mark, (data, param) in zip(marks, images):
            out.extend(ids[prev:mark])
            expansion, tensors, pad_id = self._process(data, rules, param)
            runs: list[tuple[int, int]] = []
            for t in expansion:
                if t == self.image_token_id:
                    if runs and sum(runs[-1]) == len(out):
                        runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                    else:
                        runs.append((len(out), 1))
                    out.append(pad_id)
                else:
                    out.append(t)
            inputs.append(ImageInput(pad_id=pad_id, runs=runs, tensors=tensors))
            prev = mark + 1
        out.extend(ids[prev:])
        return out, inputs
