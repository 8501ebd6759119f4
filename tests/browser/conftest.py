"""Browser tests: pytest-jupyter's per-test event loop stays away from Playwright's sync API,
which runs its own loop (the two fixtures below override pytest-jupyter's autouse ones)."""

from __future__ import annotations

import pytest


@pytest.fixture
def jp_asyncio_loop():
    """Overrides pytest-jupyter's autouse loop where Playwright's sync API runs its own."""
    yield None


@pytest.fixture
def jp_server_cleanup():
    yield
