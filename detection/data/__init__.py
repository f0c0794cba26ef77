"""Detection data: VOC / COCO / synthetic datasets by name, transforms, deterministic samplers, loaders."""

from resbackbone.training import ENV_DATA_ROOT

from .base import DataError, DetectionDataset, Record
from .catalog import DATASET_NAMES, build_coco_dataset, build_dataset, coco_image_id, get_data_root
from .loader import build_test_loader, build_train_loader, collate
from .samplers import InferenceSampler, TrainBatchSampler
from .synthetic import SYNTHETIC_CLASSES, generate_synthetic
from .transforms import DetectionTransform, decode_image, resize_scale
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
    "coco_image_id",
    "collate",
    "decode_image",
    "generate_synthetic",
    "get_data_root",
    "resize_scale",
]
