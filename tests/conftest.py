"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EKS_FLY = SHARED / "data" / "eks-fly"


@pytest.fixture
def eks_fly() -> Path:
    if not (EKS_FLY / "calibration.toml").exists():
        pytest.skip("../shared/data/eks-fly is not present")
    return EKS_FLY


@pytest.fixture
def artifacts() -> Path:
    d = REPO / "artifacts"
    d.mkdir(exist_ok=True)
    return d
