"""Shared test setup."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny test models run fastest on one thread, and two threads on two busy cores spin each other out.

    Restores the previous setting afterwards, so a test that sets its own thread count stays isolated.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Exported graphs and engines go to a cache of the test session's own, never the user's ~/.cache."""
    import os

    before = os.environ.get("SMNAS_CACHE")
    os.environ["SMNAS_CACHE"] = str(tmp_path_factory.mktemp("smnas-cache"))
    yield
    if before is None:
        os.environ.pop("SMNAS_CACHE", None)
    else:
        os.environ["SMNAS_CACHE"] = before
