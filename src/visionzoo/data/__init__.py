"""Data: sources (one per kind of input), sample lists, decoding, transforms, samplers, loaders and the device-side
normaliser."""

from ..core.errors import BadImageError, DataError
from .datasets import (
    DummyDataset,
    ImageDataset,
    Samples,
    image_folder,
    list_samples,
    read_list_file,
)
from .images import load_rgb
from .loader import (
    DataBundle,
    DeviceNormalizer,
    SeededSampler,
    build_data,
    collate_skipping,
    device_batches,
    find_samples,
    make_loader,
)
from .sources import Source, open_source, register_source
from .transforms import eval_transform, train_transform

__all__ = [
    "BadImageError",
    "DataBundle",
    "DataError",
    "DeviceNormalizer",
    "DummyDataset",
    "ImageDataset",
    "Samples",
    "SeededSampler",
    "Source",
    "build_data",
    "collate_skipping",
    "device_batches",
    "eval_transform",
    "find_samples",
    "image_folder",
    "list_samples",
    "load_rgb",
    "make_loader",
    "open_source",
    "read_list_file",
    "register_source",
    "train_transform",
]
