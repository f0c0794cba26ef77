"""Helpers shared by the test modules: script loading, a single-thread fixture, non-trivial BN statistics."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str | None = None) -> ModuleType:
    """Import a script of the repository (``tools/x.py``, ``datasets/prepare.py``: not packages) by its path."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize_bn_statistics(model: nn.Module) -> None:
    """Non-trivial BN affine parameters and running statistics, so that a wrong formula or a mis-mapped or lost
    buffer changes the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.25, 4.0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared CI cores two threads oversubscribe, and small models run faster on one
    (a ResNet-50 forward at 64 px took 3 s with two threads under load, 0.1 s with one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
