"""One model behind the server: its engine pool, its request layer (tokenizers and
Frontend), and the names it answers to.

A server serves MODEL_NAME, and beside it VLM_MODEL_NAME when that names another model:
requests with images go to the vision-language model, the rest to MODEL_NAME, and a
request's `model` picks either by name (GET /v1/models lists both)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from minisgl.frontend.generation import Frontend, selected_plugins
from minisgl.frontend.tokenizer import Tokenizer, encode_prompts
from minisgl.frontend.tokenizer_pool import TokenizerPool
from minisgl.ipc.protocol import EngineReady
from minisgl.plugins import Registry
from minisgl.settings import Settings

from .engine_pool import EnginePool
from .replica import Replica

log = logging.getLogger("minisgl.server")


def vision_settings(settings: Settings) -> Settings | None:
    """The settings of the VLM_MODEL_NAME engine, when it is a model of its own: one replica,
    its backend chosen by VLM_BACKEND (the text model's --backend may not run images)."""
    name = settings.vlm_model_name
    if not name or name == settings.model_path:
        return None
    server_values = {**settings.plugin_values, "dp_size": 1, "warm_prefixes": []}
    return msgspec.structs.replace(settings, model_path=name, backend="auto", plugin_values=server_values)


class ServedModel:
    def __init__(self, settings: Settings, registry: Registry, *, served_name: str | None = None, role: str = "") -> None:
        self.settings = settings
        self.plugins = selected_plugins(settings)  # a bad name fails before any engine starts
        self.pool = EnginePool(settings, registry)
        self.served_name = served_name
        self.role = role  # "" for MODEL_NAME, "vision" for VLM_MODEL_NAME
        self.info: EngineReady | None = None
        self.frontend: Frontend | None = None
        self.tokenizers: TokenizerPool | None = None

    @property
    def model_id(self) -> str:
        if self.served_name:
            return self.served_name
        return self.info.model_name if self.info else self.settings.model_path

    @property
    def max_context_len(self) -> int:
        assert self.info is not None
        ctx = self.info.max_context_len
        if self.settings.max_seq_len_override:
            ctx = min(ctx, self.settings.max_seq_len_override)
        return ctx

    @property
    def kv_pool_tokens(self) -> int | None:
        """The smallest KV pool of its replicas: a request must fit whichever one it is sent to."""
        pools = [info.kv_pool_tokens for info in self.pool.ready_infos if info.kv_pool_tokens]
        return min(pools) if pools else None

    @property
    def takes_images(self) -> bool:
        return self.frontend is not None and self.frontend.tokenizer.vision is not None

    def accepts(self, name: str) -> bool:
        return name in (self.model_id, self.settings.model_path, self.info.model_name if self.info else None)

    async def start(self, on_restart: Callable[[ServedModel, Replica], Awaitable[None]]) -> None:
        """Start the engines, then the tokenizers and the request layer."""
        infos = await self.pool.start(on_restart=lambda replica: on_restart(self, replica))
        self.info = info = infos[0]
        log.info(
            "model %s (%s) on backend %r: %s; context %d tokens; %d replica(s), loaded in %.1fs%s",
            info.model_name, info.model_path, info.backend, info.backend_reason, info.max_context_len, len(infos),
            max(i.load_seconds for i in infos), " (VLM_MODEL_NAME: requests with images)" if self.role else "",
        )
        s = self.settings
        tokenizer = await asyncio.to_thread(Tokenizer, info.model_path, s.trust_remote_code, s.token_cache_size)
        self.tokenizers = TokenizerPool(tokenizer, info.model_path, workers=s.num_tokenizer,
                                        trust_remote_code=s.trust_remote_code)
        await self.tokenizers.start()
        self.frontend = Frontend(tokenizer, max_context_len=self.max_context_len, eos_token_ids=info.eos_token_ids,
                                 max_new_tokens_default=s.max_new_tokens_default,
                                 kv_pool_tokens=self.kv_pool_tokens, max_logprobs=s.max_request_logprobs,
                                 embedding_size=min(i.embedding_size for i in infos), **self.plugins)

    async def warm(self, prefixes: list[str], replicas: list[Replica] | None = None) -> list[int]:
        assert self.tokenizers is not None
        ids = await self.tokenizers.run(encode_prompts, prefixes, "prefixes")
        return await self.pool.warm(ids, replicas)

    async def stop(self) -> None:
        await self.pool.stop()
        if self.tokenizers is not None:
            self.tokenizers.shutdown()
