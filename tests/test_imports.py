"""Imports flow one way: backbone (torch + torchvision only) <- engine <- classification / detection <- tools."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

# Modules `import resbackbone; resbackbone.resnet50()` must not load.
HEAVY = ("accelerate", "timm", "cv2", "yaml", "tensorboard", "albumentations", "pycocotools")


def test_backbone_import_loads_torch_and_torchvision_only() -> None:
    code = (
        "import sys, resbackbone\n"
        "resbackbone.resnet50()\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
        "print('resbackbone.engine' in sys.modules, 'resbackbone.classification' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split("\n")[:2] == ["[]", "False False"], out.stdout


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_layers_import_one_way() -> None:
    backbone = [p for p in _files("resbackbone") if p.parent == REPO / "resbackbone"]
    engine = _files("resbackbone/engine")
    classification = _files("resbackbone/classification")
    library = backbone + engine + classification + _files("detection")
    assert backbone and engine and classification
    for path in backbone:
        bad = {m for m in _imports(path) if m.startswith(("resbackbone.engine", "resbackbone.classification",
                                                           "detection", *HEAVY))}
        assert not bad, f"{path.relative_to(REPO)} (backbone layer) imports {sorted(bad)}"
    for path in engine:
        bad = {m for m in _imports(path) if m.startswith(("resbackbone.classification", "detection"))}
        assert not bad, f"{path.relative_to(REPO)} (engine layer) imports {sorted(bad)}"
    for path in classification:
        bad = {m for m in _imports(path) if m.startswith("detection")}
        assert not bad, f"{path.relative_to(REPO)} imports the detection package"
    for path in library:
        bad = {m for m in _imports(path) if m.startswith("tools")}
        assert not bad, f"{path.relative_to(REPO)} imports a tool"


def test_inference_paths_do_not_import_the_trainer() -> None:
    for name in ("detection/checkpoint.py", "detection/predictor.py", "detection/export.py", "detection/tta.py"):
        path = REPO / name
        if path.is_file():
            bad = {m for m in _imports(path) if m.startswith(("detection.train", "resbackbone.engine.trainer"))}
            assert not bad, f"{name} imports the training loop: {sorted(bad)}"
