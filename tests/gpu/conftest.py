"""GPU tests: run with `make test-gpu` (or `pytest -m gpu tests/gpu`) on a CUDA machine."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    reason = f"no CUDA device (torch {torch.__version__}, cuda build: {torch.version.cuda}); these tests need a GPU"
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.skip(reason=reason))
