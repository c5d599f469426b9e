"""The vision side of a transformers vision-language model: image embeddings, merged into
the token embeddings at the image's placeholder positions.

The model's own `get_image_features` runs the vision tower and the projector on the
processor's tensors, so every architecture transformers ships with one works the same way
(LLaVA, Idefics3/SmolVLM, ...). Embeddings are cached per image (its pad id): a prompt
whose image spans several prefill chunks runs the tower once, and a second request with
the same image whose cache hit stops inside the image needs no tower at all.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from minisgl.engine.batch import ForwardBatch
from minisgl.engine.messages import ImageInput

EMBEDDING_CACHE_SIZE = 32  # images whose embeddings stay on the device


class VisionEmbedder:
    def __init__(self, model: Any, dtype: torch.dtype, device: torch.device, vocab_size: int) -> None:
        self.model = model
        self.dtype = dtype
        self.device = device
        self.vocab_size = vocab_size
        self.embed_tokens = model.get_input_embeddings()
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def image_embeddings(self, image: ImageInput) -> torch.Tensor:
        """[image.num_tokens, hidden]: one row per placeholder position, in order."""
        hit = self._cache.get(image.pad_id)
        if hit is not None:
            self._cache.move_to_end(image.pad_id)
            return hit
        inputs = {}
        for t in image.tensors:
            value = t.tensor().to(self.device)
            inputs[t.name] = value.to(self.dtype) if value.is_floating_point() else value
        out = self.model.get_image_features(**inputs)
        features = getattr(out, "pooler_output", None)
        if features is None:
            features = out[0] if isinstance(out, tuple) else out
        if isinstance(features, (list, tuple)):
            rows = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
        else:
            rows = features.reshape(-1, features.shape[-1])
        if rows.shape[0] != image.num_tokens:
            raise ValueError(f"the vision tower gave {rows.shape[0]} embeddings for an image with "
                             f"{image.num_tokens} placeholder tokens (processor and model disagree)")
        rows = rows.to(self.dtype)
        self._cache[image.pad_id] = rows
        while len(self._cache) > EMBEDDING_CACHE_SIZE:
            self._cache.popitem(last=False)
        return rows

    def inputs_embeds(self, batch: ForwardBatch) -> torch.Tensor:
        """[1, T, hidden]: token embeddings, with image embeddings at the image positions
        (their input ids are pad ids, outside the vocabulary: they never reach the lookup)."""
        ids = batch.input_ids
        embeds = self.embed_tokens(torch.where(ids < self.vocab_size, ids, 0))
        for s in batch.images:
            rows = self.image_embeddings(s.image)
            embeds[s.token_index : s.token_index + s.length] = rows[s.row : s.row + s.length]
        return embeds[None]
