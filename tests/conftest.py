"""Shared fixtures: every test gets its own NBDEPLOY_HOME, so state never leaks between tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def nbdeploy_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.mktemp("nbdeploy-home")
    monkeypatch.setenv("NBDEPLOY_HOME", str(home))
    return home
