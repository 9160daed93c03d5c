"""Dynamic batching: requests' images queue, and one model call takes up to max_batch of them, or fewer once the
oldest has waited max_wait_ms, whichever comes first (Triton's max_queue_delay rule), or at once when no more
images are on their way. The model runs in a thread
of its own, off the event loop, one call at a time: on a CPU two concurrent calls only share its cores."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from .metrics import ServerMetrics

# one image's answer: (probabilities, class indices), best first
Answer = tuple[list[float], list[int]]
BatchFn = Callable[[Sequence[torch.Tensor]], list[Answer]]


class Overloaded(Exception):
    """The queue holds max_queue images already: the request is refused (503 + Retry-After), not queued."""


@dataclass
class _Item:
    image: torch.Tensor
    future: asyncio.Future[Answer]
    arrived: float


class Batcher:
    """submit(images) -> their answers, in order; the model sees batches of up to max_batch images."""

    def __init__(self, run_batch: BatchFn, max_batch: int, max_wait_ms: float, max_queue: int,
                 metrics: ServerMetrics | None = None, incoming: Callable[[], int] | None = None):
        self.run_batch = run_batch
        # images of requests already read and being decoded: the only ones worth waiting for. With none on their
        # way (a lone client) the model runs at once instead of idling out max_wait_ms
        self.incoming = incoming or (lambda: 1)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="visionzoo-model")

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def call_model(self, images: Sequence[torch.Tensor]) -> list[Answer]:
        """run_batch on the model thread, bypassing the queue (the warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, self.run_batch, images)

    async def submit(self, images: Sequence[torch.Tensor]) -> list[Answer]:
        if self._closing:
            raise Overloaded("the server is shutting down")
        if len(self._queue) + len(images) > self.max_queue:
            raise Overloaded(f"{len(self._queue)} images are queued already (--max-queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[Answer]] = []
        for image in images:
            future: asyncio.Future[Answer] = loop.create_future()
            self._queue.append(_Item(image, future, now))
            futures.append(future)
        self._gauge()
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def close(self) -> None:
        """Answer everything queued, then stop (the server's shutdown, after uvicorn stopped taking requests)."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        self._model_thread.shutdown(wait=True)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    async def _next_batch(self) -> list[_Item] | None:
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self._closing:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0].arrived + self.max_wait
        while len(self._queue) < self.max_batch and not self._closing and self.incoming() > 0:
            left = deadline - loop.time()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        batch: list[_Item] = []
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if not item.future.done():  # a request whose client went away was cancelled: not worth a slot
                batch.append(item)
        self._gauge()
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self._next_batch()) is not None:
            if not batch:
                continue
            started = time.perf_counter()
            try:
                answers: list[Any] = await loop.run_in_executor(self._model_thread, self.run_batch,
                                                                [item.image for item in batch])
            except Exception as e:  # a model failure fails this batch's requests (500), never the server
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            if self.metrics is not None:
                self.metrics.model_latency.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(batch))
                self.metrics.images.inc(len(batch))
            for item, answer in zip(batch, answers):
                if not item.future.done():
                    item.future.set_result(answer)
