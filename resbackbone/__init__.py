"""resbackbone: the ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition").

``import resbackbone`` loads torch and torchvision only. The training infrastructure (:mod:`resbackbone.engine`)
and the classification trainer (:mod:`resbackbone.classification`) are subpackages imported on demand; they
need the project's other dependencies (pyyaml, accelerate, timm, cv2, tqdm, tensorboard).
"""

from .blocks import BasicBlock, Bottleneck, Stem, ZeroPadShortcut, make_stage
from .cifar import CIFAR_DEPTHS, CifarResNet, cifar_plain, cifar_resnet
from .errors import CheckpointError, ConfigError, DataError, InputError, WeightsError, WeightsNotFoundError
from .frozen_bn import FrozenBatchNorm2d, convert_frozen_batchnorm, fold_batchnorm, freeze_module
from .pixels import MSRA_PIXELS, TORCHVISION_PIXELS, PixelNormalizer, PixelSpec
from .resnet import (
    RESNET_SPECS,
    STAGE_NAMES,
    ResNet,
    ShapeSpec,
    make_resnet_stage,
    plain18,
    plain34,
    plain50,
    plain101,
    plain152,
    plain_resnet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from .weights import (
    WeightsInfo,
    convert_state_dict,
    load_converted,
    load_pretrained,
    pretrained_state_dict,
    save_backbone_weights,
)

__all__ = [
    "CIFAR_DEPTHS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InputError",
    "fold_batchnorm",
    "load_converted",
    "CifarResNet",
    "WeightsError",
    "WeightsInfo",
    "WeightsNotFoundError",
    "cifar_plain",
    "cifar_resnet",
    "convert_state_dict",
    "load_pretrained",
    "pretrained_state_dict",
    "save_backbone_weights",
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm2d",
    "MSRA_PIXELS",
    "PixelNormalizer",
    "PixelSpec",
    "RESNET_SPECS",
    "ResNet",
    "STAGE_NAMES",
    "ShapeSpec",
    "Stem",
    "TORCHVISION_PIXELS",
    "ZeroPadShortcut",
    "convert_frozen_batchnorm",
    "freeze_module",
    "make_resnet_stage",
    "make_stage",
    "plain18",
    "plain34",
    "plain50",
    "plain101",
    "plain152",
    "plain_resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]
