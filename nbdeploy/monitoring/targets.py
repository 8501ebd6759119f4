"""Prometheus' view of the running deployments: file_sd target files, token files, the config.

Prometheus 2.42 sets a bearer token per scrape job, not per target (relabeling cannot reach
the ``authorization`` block), so the config holds one job per deployment name, each reading
its own ``targets/<name>.json`` and ``tokens/<name>``, all relabeled to ``job="nbdeploy"``.
A new or removed name changes the config and a running Prometheus is told to reload (SIGHUP);
a moved port only rewrites the target file, which Prometheus picks up by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nbdeploy.monitoring._files import locked, read_state, recorded_pid, write_private
from nbdeploy.store import Store

SCRAPE_INTERVAL = "5s"
JOB = "nbdeploy"


@dataclass(frozen=True)
class Target:
    """One deployment name's server, as Prometheus scrapes it."""

    name: str
    runtime: str
    scheme: str
    address: str
    token: str | None


def current() -> list[Target]:
    """One target per running deployment name (its versions share one server and token)."""
    found: dict[str, Target] = {}
    for row in Store().deployments():
        if row.name in found or not row.url:
            continue
        parts = urlsplit(row.url)
        if not parts.netloc:
            continue
        found[row.name] = Target(
            name=row.name,
            runtime=row.runtime,
            scheme=parts.scheme or "http",
            address=parts.netloc,
            token=row.token,
        )
    return [found[name] for name in sorted(found)]


def target_file(target: Target) -> str:
    """The file_sd content: the server's address with the ``deployment`` and ``runtime`` labels."""
    group = {
        "targets": [target.address],
        "labels": {"deployment": target.name, "runtime": target.runtime},
    }
    return json.dumps([group], indent=2) + "\n"


def config(root: Path, targets: list[Target]) -> str:
    """prometheus.yml (JSON is YAML): one scrape job per name, every series labelled job=nbdeploy."""
    jobs = []
    for target in targets:
        job: dict[str, object] = {
            "job_name": f"{JOB}-{target.name}",
            "scheme": target.scheme,
            "metrics_path": "/metrics",
            "file_sd_configs": [
                {"files": [str(root / "targets" / f"{target.name}.json")], "refresh_interval": "5s"}
            ],
            "relabel_configs": [{"target_label": "job", "replacement": JOB}],
        }
        if target.token:
            job["authorization"] = {
                "type": "Bearer",
                "credentials_file": str(root / "tokens" / target.name),
            }
        jobs.append(job)
    body = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": jobs,
    }
    return (
        "# Written by nbdeploy (targets.sync); edits are overwritten.\n"
        + json.dumps(body, indent=2)
        + "\n"
    )


def _remove_stale(directory: Path, keep: set[str]) -> None:
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.name.startswith("."):
            continue
        if path.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def reload_running() -> bool:
    """Ask the Prometheus nbdeploy started (verified by pid and start time) to re-read its config."""
    running = recorded_pid(read_state())
    if running is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(running[0], signal.SIGHUP)
        return True
    return False


def sync() -> list[str]:
    """Rewrite every target, token and the scrape config from the store's running deployments.

    Called after each deploy, undeploy, promote, rollback and traffic change; cheap (files are
    rewritten only when their content changes) and it creates the monitoring directory when
    missing. Returns the names Prometheus will scrape.
    """
    targets = current()
    with locked() as root:
        for target in targets:
            write_private(root / "targets" / f"{target.name}.json", target_file(target))
            if target.token:
                write_private(root / "tokens" / target.name, target.token)
        _remove_stale(root / "targets", {f"{t.name}.json" for t in targets})
        _remove_stale(root / "tokens", {t.name for t in targets if t.token})
        if write_private(root / "prometheus.yml", config(root, targets)):
            reload_running()
    return [target.name for target in targets]
