"""Fine-tuning from a trained detector (``model.weights`` / ``train_det.py --init-from``): a converted Detectron2
model with another class list onto the synthetic set: architecture adopted, shared classes' rows kept by name, the
loss falls; a wrong file is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detection.config import load_detection_config
from detection.faster_rcnn import build_faster_rcnn
from detection.train import Trainer
from tests.detection.detectron2_helpers import detectron2_like_config, detectron2_state, write_model_zoo_pkl
from tests.helpers import REPO, TINY_TRAINING
from tools import convert_weights, train_det

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE_CLASSES = ["triangle", "dog", "circle"]  # synthetic: circle, rectangle, triangle


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Detectron2-layout ResNet-18 C4 model of three classes (two shared with the synthetic set), converted."""
    root = tmp_path_factory.mktemp("d2src")
    torch.manual_seed(1)  # not the trainer's seed: fresh rows must differ from every source row
    model = build_faster_rcnn(detectron2_like_config("C4", 18, 3, post_nms_topk_test=20), weights=None)
    # Values of an initialized detector (the recipe's deliberately confident weights make a poor start).
    d2 = detectron2_state(model.state_dict(), salt=None)
    names = root / "classes.txt"
    names.write_text("\n".join(SOURCE_CLASSES) + "\n")
    out = root / "r18_c4.pth"
    assert convert_weights.main(["--detectron2", str(write_model_zoo_pkl(d2, root / "m.pkl")), "--output", str(out),
                                 "--class-names", str(names)]) == 0
    return out, torch.load(out, weights_only=True)["state_dict"]


def test_finetune_keeps_shared_class_rows_and_the_loss_falls(tmp_path: Path, synthetic_root: Path,
                                                           converted: tuple[Path, dict[str, torch.Tensor]],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    path, source = converted
    overrides = [*TINY_TRAINING, "model.backbone.name=resnet50", f"model.weights={path}", "data.num_workers=0",
                 # res5 per RoI at the detector's 14x14 pooling: few RoIs keep a step under a second on CPU.
                 "model.roi_heads.batch_size_per_image=4", f"data.root={synthetic_root}",
                 f"output_dir={tmp_path / 'run'}", "solver.max_iter=20", "solver.steps=[18]"]
    cfg = load_detection_config(REPO / "configs" / "det" / "synthetic_r18_c4.yaml", overrides)
    with caplog.at_level("INFO"):
        trainer = Trainer(cfg, cpu=True, progress=False)
    log = caplog.text
    # The detector's architecture wins over the config's (and says so); BN frozen as with ImageNet weights.
    m = trainer.cfg.model
    assert m.backbone.name == "resnet18" and "model.backbone.name: resnet50 -> resnet18" in log
    assert m.anchors.convention == "detectron2" and m.pixel.channel_order == "BGR" and m.backbone.stride_in_1x1
    assert m.backbone.norm == "frozen_bn" and m.num_classes == 3
    model = trainer.unwrapped
    assert list(model.class_names) == ["circle", "rectangle", "triangle"]
    assert "2 class(es) kept by name, 1 new: rectangle" in log
    state = model.state_dict()
    # Everything but the per-class rows is the source's tensor.
    for k, v in source.items():
        if not k.startswith(("roi_heads.cls_score", "roi_heads.bbox_pred")):
            assert torch.equal(state[k], v), k
    cls_w, box_w = state["roi_heads.cls_score.weight"], state["roi_heads.bbox_pred.weight"]
    src_cls, src_box = source["roi_heads.cls_score.weight"], source["roi_heads.bbox_pred.weight"]
    for ours, theirs in (("circle", "circle"), ("triangle", "triangle")):
        i, j = model.class_names.index(ours), SOURCE_CLASSES.index(theirs)
        assert torch.equal(cls_w[i], src_cls[j]) and torch.equal(box_w[4 * i: 4 * i + 4], src_box[4 * j: 4 * j + 4])
    assert torch.equal(cls_w[3], src_cls[3])  # background stays last
    rect = model.class_names.index("rectangle")
    assert not any(torch.equal(cls_w[rect], src_cls[j]) for j in range(4))  # fresh
    assert float(cls_w[rect].abs().max()) < 0.1  # our init (std 0.01), not a copied row

    batches = iter(trainer._loader())
    trainer.model.train()
    losses = [trainer._step(batches, it)["loss"] for it in range(20)]
    trainer.close()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


def test_init_from_wrong_file_is_one_line(tmp_path: Path, synthetic_root: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "backbone.pth"
    torch.save({"stem.conv1.weight": torch.zeros(1)}, junk)
    base = ["--no-progress", "--cpu", "--output-dir", str(tmp_path / "o"), "--data-root", str(synthetic_root),
            "--max-iter", "1", *TINY_TRAINING]
    assert train_det.main([*base, "--init-from", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert "backbone.pth" in err and "not a resnet-det detector" in err and "\n" not in err
    assert train_det.main([*base, "--init-from", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err


def test_init_from_cli_trains_from_a_converted_detector(tmp_path: Path, synthetic_root: Path,
                                                        converted: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = converted
    out = tmp_path / "o"
    assert train_det.main(["--no-progress", "--cpu", "--output-dir", str(out), "--data-root", str(synthetic_root),
                           "--max-iter", "2", "--init-from", str(path), *TINY_TRAINING, "data.num_workers=0"]) == 0
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["config"]["model"]["weights"] == str(path)
    assert saved["config"]["model"]["anchors"]["convention"] == "detectron2"
