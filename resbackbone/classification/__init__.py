"""Classification pretraining of the ResNets (ImageNet, CIFAR-10, any ImageFolder, synthetic) with accelerate.

Not imported by ``import resbackbone``: it needs the training infrastructure (:mod:`resbackbone.engine`), cv2
and accelerate.
"""

from .config import ClsConfig, load_cls_config
from .data import build_cls_datasets, multiscale_predict, synthetic_classification, ten_crop_predict
from .train import BACKBONE_WEIGHTS, ClassificationTrainer, build_classifier

__all__ = [
    "BACKBONE_WEIGHTS",
    "ClassificationTrainer",
    "ClsConfig",
    "build_classifier",
    "build_cls_datasets",
    "load_cls_config",
    "multiscale_predict",
    "synthetic_classification",
    "ten_crop_predict",
]
