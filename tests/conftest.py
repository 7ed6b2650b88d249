"""Test-wide settings."""

import torch

# One intra-op thread: the tests run tiny tensors, where a second OpenMP thread only adds
# synchronisation, and when the cores are shared with other work a multi-threaded op waits for a
# descheduled thread (README, "Performance notes").
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (run by `python -m densenet_repro gpu-check`)")


def pytest_collection_modifyitems(config, items):
    import pytest

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA GPU here (python -m densenet_repro gpu-check runs these)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
