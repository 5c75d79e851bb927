"""Shared fixtures and session settings (helpers live in tests/helpers; tests never import this file)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.models import minilm_path

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    return minilm_path()
