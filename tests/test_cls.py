"""Classification data (CIFAR-10 pickles, ImageFolder, synthetic), trainer (learning, exact resume, 10-crop) and
the classification -> detection weight hand-off."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from resbackbone.classification import ClassificationTrainer, ClsConfig, ten_crop_predict
from resbackbone.classification.data import FolderDataset, load_cifar10
from resbackbone.engine.config import from_dict
from resbackbone.errors import DataError as ClsDataError


def _write_cifar(root: Path, n_per_batch: int = 20) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with (base / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": n_per_batch, b"num_vis": 3072}, f, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n_per_batch).tolist(),
                 b"data": rng.integers(0, 255, (n_per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n_per_batch)]}
        with (base / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_cifar10_official_layout_loads_with_split(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    train = load_cifar10(tmp_path, split="train", val_split=30)
    val = load_cifar10(tmp_path, split="val", val_split=30)
    test = load_cifar10(tmp_path, split="test")
    assert (len(train), len(val), len(test)) == (70, 30, 20)
    img, label = train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and 0 <= label < 10
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32))
    assert torch.equal(test[0][0], first)  # channel-major rows of the official format


def test_malicious_cifar_pickle_is_refused(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ClsDataError, match="data_batch_3"):
        load_cifar10(tmp_path, split="train")
    assert not marker.exists()


def test_image_folder_tree(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i in range(3):
                cv2.imwrite(str(d / f"{wnid}_{i}.JPEG"), np.full((40, 50, 3), 30 * i, np.uint8))
    ds = FolderDataset(tmp_path / "train")
    assert ds.class_names == ("n01440764", "n01443537") and len(ds) == 6
    img, label = ds[4]
    assert img.shape == (3, 40, 50) and label == 1
    (tmp_path / "val" / "n01443537" / "bad.JPEG").write_bytes(b"not a jpeg")
    bad = FolderDataset(tmp_path / "val", ds.class_names)
    with pytest.raises(ClsDataError, match="bad.JPEG"):
        bad[[p.name for p, _ in bad.samples].index("bad.JPEG")]


def test_ten_crop_averages_softmax_over_the_ten_crops() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        probs = ten_crop_predict(model, x, 8)
        crops = []
        for top, left in ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2)):
            c = x[:, :, top : top + 8, left : left + 8]
            crops += [c, c.flip(-1)]
        want = torch.stack([model(c).softmax(1) for c in crops]).mean(0)
    assert probs.shape == (2, 4)
    assert torch.allclose(probs, want, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2))


def _tiny(tmp_path: Path, **solver: object) -> ClsConfig:
    return from_dict(ClsConfig, {
        "model": {"arch": "cifar_resnet8"},
        # 16 px images of 4 shape classes: seconds on a CPU.
        "data": {"dataset": "synthetic", "synthetic_per_class": 100, "synthetic_classes": 4, "num_workers": 0,
                 "crop_size": 16, "pad": 2},
        "solver": {"ims_per_batch": 50, "epochs": 10, "base_lr": 0.1, "steps": [60], "checkpoint_period": 5,
                   **solver},
        "test": {"ims_per_batch": 200},
        "output_dir": str(tmp_path),
    })


def test_short_synthetic_run_learns_well_above_chance(tmp_path: Path) -> None:
    result = ClassificationTrainer(_tiny(tmp_path), progress=False).train()
    # 4 classes: chance is 75% top-1 error.
    assert result["test_top1_error"] < 0.4, result  # measured 0.13
    assert (tmp_path / "metrics.jsonl").is_file()


def test_resume_is_exact(tmp_path: Path) -> None:
    full = ClassificationTrainer(_tiny(tmp_path / "a", epochs=2, steps=[10]), progress=False)
    full.train()
    part = ClassificationTrainer(_tiny(tmp_path / "b", epochs=2, steps=[10]), progress=False, stop_after=5)
    part.train()
    resumed = ClassificationTrainer(_tiny(tmp_path / "b", epochs=2, steps=[10]), progress=False, resume=True)
    assert resumed.start_iter == 5
    resumed.train()
    a = full.accelerator.unwrap_model(full.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_classification_to_detection_hand_off(tmp_path: Path) -> None:
    from detection.config import DetectionConfig
    from detection.faster_rcnn import build_faster_rcnn

    cfg = _tiny(tmp_path, epochs=1, steps=[])
    cfg.model.arch = "resnet18"
    trainer = ClassificationTrainer(cfg, progress=False)
    trainer.train()
    weights = tmp_path / "backbone_weights.pth"
    assert weights.is_file()
    det_cfg = DetectionConfig()
    det_cfg.model.backbone.name = "resnet18"
    det_cfg.model.backbone.weights = str(weights)
    det_cfg.model.num_classes = 3
    detector = build_faster_rcnn(det_cfg.model)
    cls_state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    det_state = detector.state_dict()
    for k, v in cls_state.items():
        if k.startswith(("stem.", "res2.", "res3.", "res4.")) and not k.endswith("num_batches_tracked"):
            assert torch.equal(det_state[f"trunk.body.{k}"], v), k
        elif k.startswith("res5.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(det_state[f"roi_heads.box_head.res5.{k[5:]}"], v), k


def test_degradation_script_writes_the_figure(tmp_path: Path) -> None:
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[1] / "tools" / "degradation.py"
    out = tmp_path / "fig6.png"
    res = subprocess.run(
        [sys.executable, str(tool), "--depths", "8", "14", "--epochs", "1", "--batch-size", "50", "--workdir",
         str(tmp_path / "runs"), "--output", str(out), "data.synthetic_per_class=50", "data.synthetic_classes=4",
         "data.crop_size=16", "data.pad=2", "data.num_workers=0"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.stat().st_size > 10_000
    for arch in ("cifar_plain8", "cifar_resnet8", "cifar_plain14", "cifar_resnet14"):
        assert (tmp_path / "runs" / arch / "metrics.jsonl").is_file()
