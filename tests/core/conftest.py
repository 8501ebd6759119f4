"""Fixtures the core tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import nbdeploy as nbd


@pytest.fixture
def cleanup() -> Iterator[None]:
    """Stop every deployment the test leaves running."""
    yield
    for endpoint in nbd.deployments():
        endpoint.stop()
