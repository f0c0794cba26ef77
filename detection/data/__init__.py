"""Detection data: VOC / COCO / synthetic datasets by name, transforms, deterministic samplers, loaders."""

from resbackbone.engine.paths import ENV_DATA_ROOT
from resbackbone.engine.sampling import InferenceSampler, TrainBatchSampler
from resbackbone.errors import DataError

from .base import DetectionDataset, Record
from .catalog import (
    DATASET_NAMES,
    build_coco_dataset,
    build_dataset,
    build_test_dataset,
    build_train_dataset,
    get_data_root,
)
from .check import shared_images, verify_images, warn_shared_images
from .loader import build_test_loader, build_train_loader, collate
from .synthetic import SYNTHETIC_CLASSES, generate_synthetic
from .transforms import DetectionTransform, decode_image, read_image, resize_scale
from .voc import VOC_CLASSES

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "DetectionDataset",
    "DetectionTransform",
    "ENV_DATA_ROOT",
    "InferenceSampler",
    "Record",
    "SYNTHETIC_CLASSES",
    "TrainBatchSampler",
    "VOC_CLASSES",
    "build_coco_dataset",
    "build_dataset",
    "build_test_loader",
    "build_train_loader",
    "build_test_dataset",
    "build_train_dataset",
    "collate",
    "decode_image",
    "generate_synthetic",
    "get_data_root",
    "read_image",
    "resize_scale",
    "shared_images",
    "verify_images",
    "warn_shared_images",
]
