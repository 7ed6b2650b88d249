"""The paper's datasets, kept on the training device as uint8, with batched on-device augmentation.

Three steps, one module each, every step feeding the next:

    specs.py     what the paper's protocol says about each Table 2 column (c10, c10+, c100, c100+, svhn)
    sources.py   where the images come from (official archive, image-folder copy, synthetic), read into
                 uint8 arrays through a .npy cache, and the content fingerprint recorded with every run
    loader.py    splits, subsets and statistics on the device, and the loader that normalises and
                 augments batches there

The engine resolves a source once (`resolve_source`, in plan.py) and loads it (`load_data`);
analyses and tests load by name (`load`).
"""

from densenet_repro.data.loader import (PAD, Data, DeviceLoader, balanced_subset, channel_stats, epoch_generator,
                                        load, load_data, random_crop_flip)
from densenet_repro.data.sources import (SYNTHETIC_SIZE, Arrays, SourceInfo, cache_dir, content_fingerprint,
                                         copy_name, default_data_root, describe_fingerprint, fingerprint,
                                         jpeg_quality, load_arrays, make_synthetic, resolve_source)
from densenet_repro.data.specs import DATASETS, SOURCES, SPECS, DatasetSpec, get_spec
from densenet_repro.errors import DataNotFoundError, DataReadError

__all__ = ["PAD", "Data", "DeviceLoader", "balanced_subset", "channel_stats", "epoch_generator", "load", "load_data",
           "random_crop_flip", "SYNTHETIC_SIZE", "Arrays", "SourceInfo", "cache_dir", "content_fingerprint",
           "copy_name", "default_data_root", "describe_fingerprint", "fingerprint", "jpeg_quality", "load_arrays",
           "make_synthetic", "resolve_source", "DATASETS", "SOURCES", "SPECS", "DatasetSpec", "get_spec",
           "DataNotFoundError", "DataReadError"]
