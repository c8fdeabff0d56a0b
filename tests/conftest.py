"""Shared test fixtures. Tests never download: data come from ../shared."""

import os
import pathlib
import signal
import time

from tfnas.runtime import quiet_tensorflow

quiet_tensorflow()

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TFNAS_SHARED", REPO.parent / "shared"))
CIFAR_MINI = SHARED / "data" / "cifar10-mini"
PUBLISHED_JSON = SHARED / "data" / "genotypes" / "published.json"


@pytest.fixture(scope="session")
def cifar_mini():
    # Fail, not skip: a silently skipped data test would hide a broken CI.
    assert (CIFAR_MINI / "train").is_dir(), f"cifar10-mini not found at {CIFAR_MINI} (set TFNAS_SHARED)"
    return CIFAR_MINI


@pytest.fixture(scope="session")
def published_json():
    return PUBLISHED_JSON


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Keep the decoded-image cache of the test session (and of the CLI
    subprocesses it starts) out of the user's home."""
    old = os.environ.get("TFNAS_CACHE_DIR")
    os.environ["TFNAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("tfnas-cache"))
    yield
    if old is None:
        os.environ.pop("TFNAS_CACHE_DIR", None)
    else:
        os.environ["TFNAS_CACHE_DIR"] = old


def kill_at_first_checkpoint(proc, run_dir: str, timeout: float = 600) -> bool:
    """SIGKILL ``proc`` (a run writing into ``run_dir``) as soon as its first
    checkpoint exists; whether one was written."""
    latest = os.path.join(run_dir, "checkpoints", "latest")
    deadline = time.time() + timeout
    while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return os.path.exists(latest)


@pytest.fixture(scope="session")
def kill_at_checkpoint():
    """:func:`kill_at_first_checkpoint`, for tests and their fixtures."""
    return kill_at_first_checkpoint
