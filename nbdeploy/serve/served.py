"""One loaded model version as the data plane holds it: model, batcher and live stats."""

from __future__ import annotations

import asyncio

from .batching import Batcher
from .model import ModelVersion
from .stats import VersionStats


class Served:
    """One loaded version with its batcher and live stats. It counts the requests using it, so
    that a version taken out of routing is closed only once they have been answered."""

    def __init__(self, model: ModelVersion, batcher: Batcher) -> None:
        self.model = model
        self.batcher = batcher
        self.stats = VersionStats()
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def version(self) -> int:
        return self.model.version

    def acquire(self) -> None:
        self._users += 1
        self._idle.clear()

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._idle.set()

    async def retire(self) -> None:
        """Wait for the requests still using this version, then drain and stop its batcher."""
        await self._idle.wait()
        await self.batcher.close()
