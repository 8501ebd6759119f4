"""Versions side by side behind one name: weighted routing, mirroring, compare stats, guards.

The router holds one immutable :class:`Table` (versions, effective weights, compare stats) and
replaces it in one assignment, so a request sees either the old routing or the new one, never
a mix. A reload loads and warms new versions before the swap and retires removed ones after
it: their in-flight and queued requests finish on the version that took them.

Mirrored calls run as tasks the client's handler never awaits; at most ``MIRROR_LIMIT`` are
outstanding, more are dropped and counted, so a slow or failing candidate cannot slow down or
fail a client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .batching import Batcher
from .errors import ClientError
from .model import ModelVersion, Repository, RepositoryError, load_version, version_directory
from .routing import Routing, RoutingError, SmoothRoundRobin, read_routing
from .served import Served
from .stats import Comparison, PairStats

log = logging.getLogger("nbdeploy.serve")

MIRROR_LIMIT = 64
GUARD_INTERVAL_S = 0.25
# In ``--state-dir``: the guard trip of the applied generation, read again on a restart.
TRIP_FILE = "tripped.json"

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Table:
    """Everything a request needs to be routed, swapped as a whole."""

    routing: Routing
    weights: dict[int, int]  # effective: the file's, or {stable: 100} after a guard tripped
    served: dict[int, Served]
    repository: Repository
    pairs: dict[int, PairStats]  # by candidate version, against routing.stable
    round_robin: SmoothRoundRobin
    since: str
    tripped: dict[str, Any] | None = None

    def role(self, version: int) -> str:
        if version == self.routing.stable:
            return "stable"
        if self.weights.get(version, 0) > 0:
            return "canary"
        return "shadow" if version in self.routing.shadow else "idle"


class Router:
    """Applies the routing file and routes, mirrors and guards one model's versions."""

    def __init__(
        self,
        path: Path,
        root: Path,
        threads: int,
        start_batcher: Callable[[ModelVersion], Batcher],
        state_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.root = root
        self.threads = threads
        self.start_batcher = start_batcher
        self.state_dir = state_dir
        self.table: Table | None = None
        self._reloading = asyncio.Lock()
        self._mirrors: set[asyncio.Task[None]] = set()
        self._last_guard_check = 0.0
        self._guard_timer: asyncio.TimerHandle | None = None
        self._warned: set[tuple[int, int]] = set()

    # --- applying the routing file ----------------------------------------------------------

    async def start(self) -> None:
        """Load the versions the routing file names; raises RoutingError or RepositoryError."""
        routing = read_routing(self.path)
        models = await asyncio.to_thread(self._load, routing.name, routing.versions)
        served = {v: Served(model, self.start_batcher(model)) for v, model in models.items()}
        self.table = self._build(routing, served, None)
        log.info("routing generation %d applied: %s", routing.generation, self._describe())
        tripped = self._remembered_trip(routing)
        if tripped is not None:
            self.table = _after_trip(self.table, tripped)
            log.warning(
                "guard trip of v%d (%s) kept from before the restart; v%d takes all traffic",
                tripped["version"],
                tripped["reason"],
                routing.stable,
            )

    async def reload(self) -> dict[str, Any]:
        """Re-read the routing file and swap to it; a ClientError leaves serving untouched."""
        async with self._reloading:
            current = self._table()
            try:
                routing = read_routing(self.path)
            except RoutingError as exc:
                raise ClientError(400, str(exc)) from None
            old = current.routing
            if routing.name != old.name:
                raise ClientError(
                    400, f"the routing file names '{routing.name}'; this server serves '{old.name}'"
                )
            if routing.generation < old.generation:
                raise ClientError(
                    409,
                    f"generation {routing.generation} is older than the applied {old.generation}",
                )
            if routing.generation == old.generation:
                return self.routing_json()
            missing = [v for v in routing.versions if v not in current.served]
            try:
                models = await asyncio.to_thread(self._load, routing.name, missing)
            except _VersionFailed as exc:
                raise ClientError(422, str(exc)) from None
            served = {
                v: current.served[v]
                if v in current.served
                else Served(models[v], self.start_batcher(models[v]))
                for v in routing.versions
            }
            self.table = self._build(routing, served, current)
            log.info("routing generation %d applied: %s", routing.generation, self._describe())
            for version, gone in current.served.items():
                if version not in served:
                    await gone.retire()
                    log.info(
                        "%s v%d unloaded: its queued requests were answered", old.name, version
                    )
            return self.routing_json()

    def _load(self, name: str, versions: list[int]) -> dict[int, ModelVersion]:
        """Worker thread: load and warm ``versions``, naming the first that fails."""
        models = {}
        for version in versions:
            try:
                directory = version_directory(self.root, name, version)
                models[version] = load_version(name, version, directory, self.threads)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, RepositoryError) else repr(exc)
                raise _VersionFailed(f"version {version} could not be loaded: {reason}") from exc
        return models

    def _build(self, routing: Routing, served: dict[int, Served], previous: Table | None) -> Table:
        stable = routing.stable
        keep = (
            previous is not None
            and set(previous.served) == set(served)
            and previous.routing.stable == stable
        )
        if keep:
            assert previous is not None
            pairs, since = previous.pairs, previous.since
        else:
            reference = served[stable].model
            pairs = {
                v: PairStats(stable, v, Comparison.plan(reference, s.model))
                for v, s in served.items()
                if v != stable
            }
            since = _now()
        repository = Repository(
            {routing.name: {v: s.model for v, s in served.items()}}, {routing.name: stable}
        )
        self._last_guard_check = 0.0
        return Table(
            routing=routing,
            weights=dict(routing.weights),
            served=served,
            repository=repository,
            pairs=pairs,
            round_robin=SmoothRoundRobin(routing.weights),
            since=since,
        )

    def _table(self) -> Table:
        assert self.table is not None, "start() applies the routing before any request"
        return self.table

    @property
    def repository(self) -> Repository | None:
        return None if self.table is None else self.table.repository

    async def close(self) -> None:
        """Let outstanding mirrors finish, then drain and stop every batcher."""
        if self._guard_timer is not None:
            self._guard_timer.cancel()
        await asyncio.gather(*self._mirrors, return_exceptions=True)
        if self.table is not None:
            for served in self.table.served.values():
                await served.batcher.close()

    # --- routing -----------------------------------------------------------------------------

    def pick(self) -> Served:
        """The version that answers the next unversioned request (smooth weighted round-robin)."""
        table = self._table()
        return table.served[table.round_robin.pick()]

    def served(self, version: int) -> Served:
        return self._table().served[version]

    def compared_outputs(self, served: Served) -> list[str]:
        """Outputs an unversioned request must compute so that its answer can be compared."""
        table = self._table()
        if served.version == table.routing.stable:
            return [pair.comparison.reference_output for pair in table.pairs.values()][:1]
        pair = table.pairs.get(served.version)
        return [pair.comparison.candidate_output] if pair is not None else []

    def record(self, served: Served, latency_ms: float, *, error: bool, mirrored: bool) -> None:
        served.stats.record(latency_ms, error=error, mirrored=mirrored)
        self._guard_touched(served.version)

    # --- mirroring ---------------------------------------------------------------------------

    def mirror(
        self, answered: Served, feeds: Arrays, datatypes: dict[str, str], results: Arrays
    ) -> asyncio.Task[None] | None:
        """Send a copy of an answered unversioned request to the shadows, and to the stable
        version when a canary answered; never awaited by the client's handler. Returns the
        task doing it (the request's memory stays reserved until it ends), if any."""
        table = self._table()
        if table.served.get(answered.version) is not answered:
            return None  # a reload removed it while this request was in flight
        stable = table.routing.stable
        targets = [v for v in table.routing.shadow if v != answered.version]
        if answered.version != stable:
            targets.insert(0, stable)
        if not targets:
            return None
        jobs = [table.served[v] for v in targets]
        if len(self._mirrors) >= MIRROR_LIMIT:
            for job in jobs:
                job.stats.dropped += 1
            return None
        for job in jobs:
            job.acquire()
        task = asyncio.get_running_loop().create_task(
            self._mirror(table, answered, feeds, datatypes, results, jobs)
        )
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)
        return task

    async def _mirror(
        self,
        table: Table,
        answered: Served,
        feeds: Arrays,
        datatypes: dict[str, str],
        results: Arrays,
        jobs: list[Served],
    ) -> None:
        stable = table.routing.stable
        reference = results if answered.version == stable else None
        try:
            for job in jobs:
                outputs = await self._call(job, feeds, datatypes)
                if job.version == stable:
                    reference = outputs
                    pair = table.pairs[answered.version]
                    if outputs is not None:
                        self._compare(pair, outputs, results)
                    continue
                pair = table.pairs[job.version]
                if outputs is None:
                    pair.candidate_errors += 1
                    self._guard_touched(job.version)
                elif reference is not None:
                    self._compare(pair, reference, outputs)
        except Exception:
            log.exception("mirroring a request of %s failed", table.routing.name)
        finally:
            for job in jobs:
                job.release()

    async def _call(self, job: Served, feeds: Arrays, datatypes: dict[str, str]) -> Arrays | None:
        """Every output of ``job`` for the mirrored request, or None when it failed."""
        started = time.perf_counter()
        model = job.model
        try:
            checked = await asyncio.to_thread(model.check_inputs, feeds, datatypes)
            outputs = await job.batcher.infer(checked, [info.name for info in model.outputs])
        except Exception as exc:
            self.record(job, _ms_since(started), error=True, mirrored=True)
            key = (self._table().routing.generation, job.version)
            if key not in self._warned:
                self._warned.add(key)
                message = exc.message if isinstance(exc, ClientError) else repr(exc)
                log.warning(
                    "%s v%d failed on a mirrored request: %s", model.name, job.version, message
                )
            return None
        self.record(job, _ms_since(started), error=False, mirrored=True)
        return outputs

    def _compare(self, pair: PairStats, reference: Arrays, candidate: Arrays) -> None:
        comparison = pair.comparison
        pair.add(reference[comparison.reference_output], candidate[comparison.candidate_output])
        self._guard_touched(pair.candidate)

    # --- guards ------------------------------------------------------------------------------

    def _guard_touched(self, version: int) -> None:
        """Check the guards at most every GUARD_INTERVAL_S after the guarded version changed."""
        table = self._table()
        guards = table.routing.guards
        if guards is None or guards.version != version or table.tripped or self._guard_timer:
            return
        wait = self._last_guard_check + GUARD_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._check_guards()
        else:
            self._guard_timer = asyncio.get_running_loop().call_later(wait, self._check_guards)

    def _check_guards(self) -> None:
        self._guard_timer = None
        self._last_guard_check = time.monotonic()
        table = self._table()
        reason = _guard_violation(table)
        if reason is None or table.tripped:
            return
        guards = table.routing.guards
        assert guards is not None
        tripped = {
            "version": guards.version,
            "reason": reason,
            "at": _now(),
            "generation": table.routing.generation,
        }
        self.table = _after_trip(table, tripped)
        log.warning(
            "guard tripped for %s v%d: %s; v%d now takes all traffic",
            table.routing.name,
            guards.version,
            reason,
            table.routing.stable,
        )
        self._remember_trip(tripped)

    def _remember_trip(self, tripped: dict[str, Any]) -> None:
        """Write the trip where a restart finds it (the routing file is the host's and may be
        read-only): until the host records it, a crash must not bring the candidate back."""
        if self.state_dir is None:
            return
        path = self.state_dir / TRIP_FILE
        partial = path.with_name(f".{TRIP_FILE}.{os.getpid()}")
        try:
            partial.write_text(json.dumps(tripped))
            os.replace(partial, path)
        except OSError as exc:
            log.error("cannot keep the guard trip in %s (a restart would forget it): %s", path, exc)

    def _remembered_trip(self, routing: Routing) -> dict[str, Any] | None:
        """The kept trip if it belongs to ``routing``'s generation (a newer routing file is
        the host's decision after it, and stands)."""
        if self.state_dir is None or routing.guards is None:
            return None
        try:
            tripped = json.loads((self.state_dir / TRIP_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("ignoring the kept guard trip in %s: %s", self.state_dir, exc)
            return None
        if (
            not isinstance(tripped, dict)
            or tripped.get("generation") != routing.generation
            or tripped.get("version") != routing.guards.version
            or not isinstance(tripped.get("reason"), str)
        ):
            return None
        return tripped

    # --- admin views ---------------------------------------------------------------------------

    def routing_json(self) -> dict[str, Any]:
        table = self._table()
        routing = table.routing
        return {
            "generation": routing.generation,
            "name": routing.name,
            "stable": routing.stable,
            "weights": {str(v): w for v, w in table.weights.items()},
            "shadow": list(routing.shadow),
            "guards": routing.guards.to_json() if routing.guards else None,
            "loaded": sorted(table.served),
            "tripped": table.tripped,
        }

    def stats_json(self) -> dict[str, Any]:
        table = self._table()
        return {
            "generation": table.routing.generation,
            "since": table.since,
            "versions": {
                str(v): {
                    "weight": table.weights.get(v, 0),
                    "role": table.role(v),
                    **served.stats.to_json(),
                }
                for v, served in sorted(table.served.items())
            },
            "pairs": [pair.to_json() for _, pair in sorted(table.pairs.items())],
        }

    def _describe(self) -> str:
        table = self._table()
        return ", ".join(f"v{v} {table.role(v)} {table.weights.get(v, 0)}%" for v in table.served)


class _VersionFailed(RepositoryError):
    """A version named by the routing file could not be loaded (the message says which)."""


def _guard_violation(table: Table) -> str | None:
    """Why the guarded version must lose its traffic, or None while it is within its limits."""
    guards = table.routing.guards
    if guards is None:
        return None
    stats = table.served[guards.version].stats
    calls = stats.calls
    if calls >= guards.min_requests:
        rate = stats.errors / calls
        if guards.max_error_rate is not None and rate > guards.max_error_rate:
            return (
                f"error rate {rate:.2f} > max_error_rate {guards.max_error_rate} over {calls}"
                " requests"
            )
        p99 = stats.p99_ms()
        if guards.max_p99_ms is not None and p99 is not None and p99 > guards.max_p99_ms:
            return f"p99 {p99:.1f} ms > max_p99_ms {guards.max_p99_ms} over {calls} requests"
    pair = table.pairs.get(guards.version)
    if guards.min_agreement is None or pair is None or pair.compared < guards.min_requests:
        return None
    agreement = pair.agreement()
    if agreement is not None and agreement < guards.min_agreement:
        return (
            f"agreement {agreement:.2f} < min_agreement {guards.min_agreement} over"
            f" {pair.compared} rows"
        )
    return None


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _after_trip(table: Table, tripped: dict[str, Any]) -> Table:
    """``table`` with all traffic on the stable version because of ``tripped``."""
    stable = table.routing.stable
    weights = {v: 100 if v == stable else 0 for v in table.weights}
    return dataclasses.replace(
        table, weights=weights, round_robin=SmoothRoundRobin(weights), tripped=tripped
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
