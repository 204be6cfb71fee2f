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
