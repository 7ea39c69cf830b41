"""Shared fixtures: paths to ../shared and the toy dataset."""

from __future__ import annotations

import os
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


# torch.compile of the training forward costs 20-60 s per shape on 2 cores: tests train eagerly
# unless a test switches it on itself (SP4SC_COMPILE=1 or --model.compile_backbone true).
os.environ.setdefault("SP4SC_COMPILE", "0")
