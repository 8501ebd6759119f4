"""One loaded model version as the data plane holds it: model, batcher and live stats."""

from __future__ import annotations

import asyncio
import logging

from .batching import Batcher
from .model import ModelVersion
from .profile import LiveProfile
from .stats import VersionStats

log = logging.getLogger("nbdeploy.serve")

REQUIRED = ("feature", "kind", "tensor", "extract", "type", "expected")


class Served:
    """One loaded version with its batcher, live stats and live drift profile (when its
    ``nbdeploy.json`` holds a reference profile). It counts the requests using it, so that a
    version taken out of routing is closed only once they have been answered."""

    def __init__(self, model: ModelVersion, batcher: Batcher) -> None:
        self.model = model
        self.batcher = batcher
        self.stats = VersionStats()
        self.profile = _live_profile(model)
        # Outputs the profile reads: computed for every request, even when not asked for.
        self.profiled_outputs: tuple[str, ...] = tuple(
            dict.fromkeys(
                f["tensor"]
                for f in (self.profile.features if self.profile else [])
                if f["kind"] == "output"
            )
        )
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


def _live_profile(model: ModelVersion) -> LiveProfile | None:
    """The live window of ``model``'s reference profile, or None without a usable one."""
    reference = model.extras.get("profile")
    if reference is None:
        return None
    try:
        live = LiveProfile(reference)
        broken = [f for f in live.features if not isinstance(f, dict) or set(REQUIRED) - set(f)]
    except (KeyError, TypeError, ValueError) as exc:
        broken = [repr(exc)]
    if broken:
        log.warning(
            "%s v%d: the drift profile is not usable (%s); no drift",
            model.name,
            model.version,
            str(broken[0])[:200],
        )
        return None
    names = {info.name for info in model.inputs} | {info.name for info in model.outputs}
    unknown = sorted({f["tensor"] for f in live.features} - names)
    if unknown:
        log.warning(
            "%s v%d: the drift profile names tensors %s the model does not have; no drift",
            model.name,
            model.version,
            unknown,
        )
        return None
    return live
