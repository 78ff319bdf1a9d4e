"""A producer started on first use, shared by what a KafkaTopic writes (dead letters, outputs).

Started lazily so that an unreachable cluster fails a write (which is retried, holding the partition) rather
than the worker's start-up; acks=all because a write must be durable before the source's offset moves.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options

DELIVERY_TIMEOUT_MS = 10_000
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class LazyProducer:
    def __init__(
        self, servers: str, connection: KafkaConnection | None = None, *, max_request_bytes: int = MAX_REQUEST_BYTES
    ) -> None:
        self.servers = servers
        self.connection = connection
        self._max_request_bytes = max_request_bytes
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        """Partitions write concurrently: the first to arrive starts the producer, the others wait for it."""

    async def get(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._starting:
            if self._producer is not None:
                return self._producer
            options = await client_options(self.servers, self.connection)
            producer = AIOKafkaProducer(
                **options,
                acks="all",
                request_timeout_ms=DELIVERY_TIMEOUT_MS,
                max_request_size=self._max_request_bytes,
            )
            try:
                await connect(producer, self.servers, options)
            except Exception:
                await producer.stop()
                raise
            self._producer = producer
            return producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
