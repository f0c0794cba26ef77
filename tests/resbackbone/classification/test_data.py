"""resbackbone.classification.data: CIFAR-10 pickles (official layout, refusing code), ImageFolder trees, 10-crop
prediction."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from resbackbone.classification import ten_crop_predict
from resbackbone.classification.data import FolderDataset, load_cifar10
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
