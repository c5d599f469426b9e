"""KV pages between the device pool and the host, for the hierarchical cache's tiers.

On CUDA the pool's pages go to pinned host memory with non-blocking copies on a side
stream (which first waits for the step's stream, so it copies what the step wrote); an
event says when they have landed, and nothing reads them before it (`Landing.wait`). The
step that evicted them does not wait. Pages go back to the device non-blocking on the
step's stream, so the prefill that reads them is ordered after them. Elsewhere (CPU, MPS)
a copy is a plain synchronous one.
"""

from __future__ import annotations

from typing import Any

import torch


class Landing:
    """Copies in flight to the host: done() without blocking, wait() until they are."""

    def __init__(self, event: Any = None) -> None:
        self.event = event  # None: already there (a synchronous copy)

    def done(self) -> bool:
        return self.event is None or bool(self.event.query())

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class HostCopier:
    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    def to_host(self, data: torch.Tensor, page_size: int) -> tuple[list[torch.Tensor], Landing]:
        """`data` ([pages * page_size, ...], on the pool's device or the host) cut into one host
        tensor a page, each its own memory, and when they can be read."""
        n = data.shape[0] // page_size
        if data.device.type != "cuda":  # a runner that copies to the host itself
            cpu = data.to("cpu")
            keep = torch.Tensor.pin_memory if self.cuda else torch.Tensor.clone
            return [keep(cpu[i * page_size : (i + 1) * page_size]) for i in range(n)], Landing()
        assert self.stream is not None, "a CUDA tensor for a copier of another device"
        pages = [torch.empty((page_size, *data.shape[1:]), dtype=data.dtype, pin_memory=True) for _ in range(n)]
        self.stream.wait_stream(torch.cuda.current_stream(data.device))
        with torch.cuda.stream(self.stream):
            for i, page in enumerate(pages):
                page.copy_(data[i * page_size : (i + 1) * page_size], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        data.record_stream(self.stream)  # the allocator must not reuse it before the copies ran
        return pages, Landing(event)

    def to_device(self, pages: list[torch.Tensor]) -> torch.Tensor:
        """The pages, concatenated, where the pool is (non-blocking from pinned memory on CUDA)."""
        if not self.cuda:
            return torch.cat(pages)
        return torch.cat([p.to(self.device, non_blocking=True) for p in pages])
