import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
# Servers the tests spawn run the CPU frame step eagerly: compiling it takes a minute per fresh cache.
# The compiled path has its own tests (tests/unit/test_compiled_step.py).
os.environ.setdefault("CSM_COMPILE_CPU", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped with a printed reason without it")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def inductor_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One Inductor cache for the session's compiled-step tests: compiled once, then cache hits."""
    return str(tmp_path_factory.mktemp("inductor"))
