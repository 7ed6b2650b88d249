"""Test-wide settings."""

import torch

# One intra-op thread: the tests run tiny tensors, where a second OpenMP thread only adds
# synchronisation, and on a 2-core machine shared with other work a multi-threaded op waits for
# a descheduled thread (measured here: DenseNet-100 forward+backward on a 2x3x8x8 batch took
# 10 s with two threads on a busy machine, 0.3 s with one).
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
