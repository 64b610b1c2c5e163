"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thread")
def threads(request):
    """Run the test at 1 and at 2 intra-op threads: float sums split over threads add in another
    order, as on another CPU, so a float-sensitive test sees two orders on every machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
