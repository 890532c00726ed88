import logging
import os
import sys
from pathlib import Path

import pytest

# model caches: keep tests from writing into the user's home when CI sets nothing
os.environ.setdefault("AMBIENT_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# what Dask's nanny writes into the process starting a local cluster, for its workers
_DASK_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
_ENV_AT_START = {k: os.environ.get(k) for k in _DASK_ENV}


@pytest.fixture(autouse=True)
def _thread_env_restored():
    """After each test, the thread-count variables are as the session found them: Dask's
    local clusters (the parallel-build tests make their own, some in module fixtures) set
    OMP_NUM_THREADS=1 here and leave it, and every subprocess a later test starts would then
    run torch on one thread and round differently from the in-process run it is compared
    with (tests/e2e/test_rounds.py failed that way after tests/data)."""
    yield
    for k, v in _ENV_AT_START.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip(f"real data not available: {d} is absent (CI places ../shared beside the repo)")
    return d


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from ambient_rlhf.models.load import resolve_model

    return resolve_model("tiny-random")


@pytest.fixture(scope="session")
def default_model_path() -> str:
    from ambient_rlhf.models.load import resolve_model

    return resolve_model("default")


@pytest.fixture
def warnings_seen():
    """Warnings of the package's loggers (the CLI turns propagation to the root off, so
    pytest's caplog would miss them)."""
    seen: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    h = H(logging.WARNING)
    logger = logging.getLogger("ambient_rlhf")
    logger.addHandler(h)
    yield seen
    logger.removeHandler(h)
