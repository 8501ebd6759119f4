"""Shared fixtures: every test gets its own NBDEPLOY_HOME, so state never leaks between tests.

Downloads shared between deployments (the server's wheelhouse) live in one NBDEPLOY_CACHE
for the whole session, or in the one the environment names (the test command sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ("pytest_jupyter.jupyter_server",)


@pytest.fixture(scope="session")
def nbdeploy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("NBDEPLOY_CACHE")
    path = Path(configured) if configured else tmp_path_factory.mktemp("nbdeploy-cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def nbdeploy_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, nbdeploy_cache: Path
) -> Path:
    home = tmp_path_factory.mktemp("nbdeploy-home")
    monkeypatch.setenv("NBDEPLOY_HOME", str(home))
    monkeypatch.setenv("NBDEPLOY_CACHE", str(nbdeploy_cache))
    return home
