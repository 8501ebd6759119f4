"""REST routes for watching a deployment run: its live numbers and its drift, as the
labextension's sparklines and monitor panel poll them (one ``nbdeploy.api`` call each).

``GET deployments/<name>/stats?window=60`` answers ``StatsReport.to_dict()`` (window 1-600 s);
``GET deployments/<name>/drift?version=N`` answers ``DriftReport.to_dict()`` (the stable
version by default). 404 for an unknown deployment, 400 for a bad window or version, 502
when the endpoint does not answer, 409 when the version has no reference profile to compare.
"""

from __future__ import annotations

import math

import tornado.web

from nbdeploy import api
from nbdeploy._errors import DeployError, InputError
from nbdeploy.jupyter.server.handlers import (
    NbdeployAPIHandler,
    find_endpoint,
    http_error,
    run_blocking,
    version_in_path,
)

MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 600.0


def window_argument(raw: str) -> float:
    """The ``window`` query argument in seconds, or a 400 saying what is allowed."""
    try:
        window = float(raw)
    except ValueError:
        window = math.nan
    if not MIN_WINDOW_S <= window <= MAX_WINDOW_S:
        raise http_error(
            400,
            f"window must be a number of seconds from {MIN_WINDOW_S:g} to {MAX_WINDOW_S:g};"
            f" got {raw!r}",
        )
    return window


class StatsHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        """Request rate, errors, latency quantiles, batching, queueing and the per-version
        split over the last ``window`` seconds, with a series for charts."""
        window = window_argument(self.get_argument("window", "60"))
        await find_endpoint(name)
        report = await run_blocking(
            api.stats, name, window, errors=((InputError, 400), (DeployError, 502))
        )
        self.reply(report.to_dict())


class DriftHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        """Per feature, how far the live inputs and outputs are from the reference, worst first."""
        raw = self.get_argument("version", "")
        version = version_in_path(raw) if raw else None
        await find_endpoint(name)
        report = await run_blocking(
            api.drift, name, version, errors=((InputError, 400), (DeployError, 409))
        )
        self.reply(report.to_dict())
