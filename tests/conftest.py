"""Shared fixtures: where ../shared is, real photo bytes. Plain helpers live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED

needs_shared = pytest.mark.skipif(
    not SHARED.exists() and not os.environ.get("CI"),
    reason="../shared (fixtures and photos) is not beside the checkout",
)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        if os.environ.get("CI"):
            pytest.fail("../shared must be present in CI")
        pytest.skip("../shared (fixtures and photos) is not beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def vehicle_jpeg(shared: Path) -> bytes:
    return sorted((shared / "images" / "vehicle").glob("*.jpg"))[0].read_bytes()
