"""Shared fixtures: paths to ../shared and the toy dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a message saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared real data/weights beside the checkout")
    return path


@pytest.fixture
def esc10_root() -> Path:
    return shared_path("data", "esc10")


@pytest.fixture
def tau_meta_root() -> Path:
    return shared_path("data", "tau2020-meta")


@pytest.fixture
def sp4asc_weights() -> Path:
    return shared_path("weights", "sp4asc")
