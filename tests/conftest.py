import logging
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

# The tests' own torch work runs on the main thread with one CPU thread, so it makes no OpenMP pool
# beside the in-process engines' threads (engine/threads.py: a second pool on 2 cores makes every
# engine frame ~3x slower). Imported first, threads.py has read torch's default for the engines.
from csm_service.engine.threads import use_cpu_threads

use_cpu_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped with a printed reason without it")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def inductor_cache() -> str:
    """One Inductor cache for the compiled-step tests, kept between runs like pip's cache: compiling
    the two graph sets costs ~2 minutes on 2 cores from cold, seconds after. Inductor keys its
    entries by the graph, torch's version and the compile options, so a changed piece recompiles.
    ``CSM_TEST_INDUCTOR_CACHE`` moves it (an empty directory gives a cold run)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "csm-service" / "test-inductor"
    path = os.environ.get("CSM_TEST_INDUCTOR_CACHE", str(default))
    print(f"Inductor cache for the compiled-step tests: {path}")
    return path


class AsyncioLeftovers(logging.Handler):
    """asyncio's reports of work left on an event loop after it closed: a task destroyed while still
    pending, or a task that failed with "Event loop is closed" (e.g. an HTTP client a test never
    closed, collected during a later test: its ``__del__`` closes sockets that belong to the old
    loop). Each is a leak; :func:`no_asyncio_leftovers` fails the test during which one is reported."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        loop_closed = isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)
        if loop_closed or "Task was destroyed but it is pending" in record.getMessage():
            self.reports.append(logging.Formatter().format(record))


ASYNCIO_LEFTOVERS = AsyncioLeftovers()
logging.getLogger("asyncio").addHandler(ASYNCIO_LEFTOVERS)


@pytest.fixture(autouse=True)
def no_asyncio_leftovers() -> object:
    """Fail a test during which asyncio reported a leftover (this test's, or an earlier test's that
    the garbage collector reached only now: the report says where it was made)."""
    seen = len(ASYNCIO_LEFTOVERS.reports)
    yield
    if len(ASYNCIO_LEFTOVERS.reports) > seen:
        report = ASYNCIO_LEFTOVERS.reports[seen]
        pytest.fail(f"asyncio reported work left on a closed event loop:\n{report[-4000:]}", pytrace=False)
