"""resbackbone: the ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition").

``import resbackbone`` loads nothing heavy: the names below are imported on first use (PEP 562), so that
``resbackbone.errors`` serves code that must run without torch (the onnxruntime predictor, tools/infer.py on an
``.onnx`` file); ``resbackbone.resnet50`` and ``from resbackbone import resnet50`` load torch and torchvision only.
The training infrastructure (:mod:`resbackbone.engine`) and the classification trainer
(:mod:`resbackbone.classification`) are subpackages imported on demand; they need the project's other dependencies
(pyyaml, accelerate, timm, cv2, tqdm, tensorboard).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:
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

# Public name -> the submodule defining it (imported when the name is first read).
_LAZY: dict[str, str] = {
    "BasicBlock": "blocks",
    "Bottleneck": "blocks",
    "Stem": "blocks",
    "ZeroPadShortcut": "blocks",
    "make_stage": "blocks",
    "CIFAR_DEPTHS": "cifar",
    "CifarResNet": "cifar",
    "cifar_plain": "cifar",
    "cifar_resnet": "cifar",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "InputError": "errors",
    "WeightsError": "errors",
    "WeightsNotFoundError": "errors",
    "FrozenBatchNorm2d": "frozen_bn",
    "convert_frozen_batchnorm": "frozen_bn",
    "fold_batchnorm": "frozen_bn",
    "freeze_module": "frozen_bn",
    "MSRA_PIXELS": "pixels",
    "TORCHVISION_PIXELS": "pixels",
    "PixelNormalizer": "pixels",
    "PixelSpec": "pixels",
    "RESNET_SPECS": "resnet",
    "STAGE_NAMES": "resnet",
    "ResNet": "resnet",
    "ShapeSpec": "resnet",
    "make_resnet_stage": "resnet",
    "plain18": "resnet",
    "plain34": "resnet",
    "plain50": "resnet",
    "plain101": "resnet",
    "plain152": "resnet",
    "plain_resnet": "resnet",
    "resnet18": "resnet",
    "resnet34": "resnet",
    "resnet50": "resnet",
    "resnet101": "resnet",
    "resnet152": "resnet",
    "WeightsInfo": "weights",
    "convert_state_dict": "weights",
    "load_converted": "weights",
    "load_pretrained": "weights",
    "pretrained_state_dict": "weights",
    "save_backbone_weights": "weights",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


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
