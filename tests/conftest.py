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
