"""detection.onnx_predictor and tools/infer.py on an .onnx file: the torch-free runtime gives the PyTorch
Predictor's detections and the same output files, in a process where importing torch fails; the package imports
that keep it torch-free; the metadata round trip; what the export check accepts as "the same detections"."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detection.checkpoint import detector_payload
from detection.config import load_detection_config
from detection.faster_rcnn import build_faster_rcnn
from tests.helpers import (
    REPO,
    SCORE_TOL,
    TINY_CLASSES,
    TINY_FPN_DETECTOR,
    assert_same_detections,
    noise_image,
    randomize_bn_statistics,
    subprocess_env,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# The training data's own ids, recorded in the checkpoint and carried into the ONNX metadata.
CATEGORY_IDS = [11, 22, 33]
IMAGE_IDS = {"photo.png": 7}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint, its .onnx export, a folder with two images): a tiny FPN detector with non-trivial BN statistics
    and dataset ids, exported by the tool (checked on photo.png)."""
    from tools import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    cfg = load_detection_config(None, TINY_FPN_DETECTOR)
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model, class_names=TINY_CLASSES).eval()
    randomize_bn_statistics(model)
    model.dataset_meta = {"category_ids": CATEGORY_IDS, "image_ids": IMAGE_IDS}
    ckpt = root / "model_final.pth"
    torch.save(detector_payload(model, cfg, TINY_CLASSES), ckpt)
    images = root / "images"
    images.mkdir()
    # 90 x 140 -> 62 x 96 at the test size (64 / 96): neither side a multiple of 32; the second one portrait.
    cv2.imwrite(str(images / "photo.png"), cv2.cvtColor(noise_image(90, 140, 3), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(images / "tall.jpg"), cv2.cvtColor(noise_image(150, 100, 5), cv2.COLOR_RGB2BGR))
    onnx_path = root / "model.onnx"
    assert export_onnx.main(["--checkpoint", str(ckpt), "--output", str(onnx_path), "--check-image",
                             str(images / "photo.png")]) == 0
    return ckpt, onnx_path, images


def test_onnx_predictor_equals_the_torch_predictor(exported: tuple[Path, Path, Path], one_thread: None) -> None:
    """Same resize, same graph, same rescale: the exact-mode PyTorch Predictor's detections in original pixels
    (boxes within 1e-3 px, scores within 1e-4), and the same interface (classes, test size, dataset ids)."""
    from detection.onnx_predictor import OnnxPredictor
    from detection.predictor import Predictor

    ckpt, onnx_path, images = exported
    ours = OnnxPredictor(onnx_path, score_thresh=0.1, threads=1)
    ref = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.1, exact=True)
    assert ours.class_names == ref.class_names == TINY_CLASSES
    assert (ours.min_size, ours.max_size) == (ref.min_size, ref.max_size) == (64, 96)
    assert ours.dataset_meta == ref.dataset_meta == {"category_ids": CATEGORY_IDS, "image_ids": IMAGE_IDS}
    files = sorted(images.iterdir())
    got = list(ours.predict_files(files))
    for (path, _, det), want in zip(got, ref(files)):
        assert len(want["boxes"]) > 0 and det["boxes"].dtype == np.float32 and det["labels"].dtype == np.int64
        assert_same_detections(det, want, path.name, box_tol=1e-3, score_tol=SCORE_TOL)
        assert det["scores"].min() >= 0.1
    assert OnnxPredictor(onnx_path, min_size=32, max_size=48).min_size == 32  # the test size can be overridden


def _run_infer_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """tools/infer.py's main in a fresh interpreter where ``import torch`` / ``import torchvision`` raise."""
    code = textwrap.dedent(f"""
        import runpy, sys
        for name in ("torch", "torchvision"):
            sys.modules[name] = None  # any import of them raises ImportError
        sys.argv = ["infer.py", *{args!r}]
        try:
            runpy.run_path({str(REPO / "tools" / "infer.py")!r}, run_name="__main__")
        except SystemExit as e:
            if e.code:
                raise
        loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in
                        ("torch", "torchvision", "albumentations", "timm", "accelerate"))
        print("heavy modules:", loaded)
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=subprocess_env(cwd), capture_output=True,
                          text=True, timeout=300)


def test_infer_on_an_onnx_file_runs_without_torch_and_writes_the_same_files(exported: tuple[Path, Path, Path],
                                                                            tmp_path: Path) -> None:
    """tools/infer.py --checkpoint model.onnx in a process that cannot import torch: drawn images,
    detections.json and coco_results.json as the PyTorch path writes them (the dataset's own category and image
    ids included), the detections within 1e-3 px / 1e-4."""
    from tools import infer

    ckpt, onnx_path, images = exported
    run = _run_infer_without_torch(["--checkpoint", str(onnx_path), "--input", str(images), "--output",
                                    str(tmp_path / "onnx"), "--score-thresh", "0.1"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "heavy modules: []" in run.stdout, run.stdout
    assert infer.main(["--checkpoint", str(ckpt), "--input", str(images), "--output", str(tmp_path / "torch"),
                       "--score-thresh", "0.1", "--cpu", "--exact"]) == 0
    outputs = {}
    for name in ("onnx", "torch"):
        out = tmp_path / name
        assert sorted(p.name for p in out.iterdir()) == ["coco_results.json", "detections.json", "photo.png",
                                                         "tall.jpg"]
        outputs[name] = (json.loads((out / "detections.json").read_text()),
                         json.loads((out / "coco_results.json").read_text()))
    (det_o, coco_o), (det_t, coco_t) = outputs["onnx"], outputs["torch"]
    assert det_o["class_names"] == det_t["class_names"] == TINY_CLASSES
    assert det_o["images"].keys() == det_t["images"].keys() == {"photo.png", "tall.jpg"}
    for key, entry in det_t["images"].items():
        mine = det_o["images"][key]
        assert {k: mine[k] for k in ("image_id", "height", "width")} == {k: entry[k] for k in ("image_id", "height",
                                                                                              "width")}
        assert len(entry["detections"]) > 0
        as_arrays = [{"boxes": [d["box"] for d in e], "scores": [d["score"] for d in e],
                      "labels": [d["label"] for d in e]} for e in (mine["detections"], entry["detections"])]
        assert_same_detections(*as_arrays, key, box_tol=1e-3, score_tol=SCORE_TOL)
        assert {d["category_id"] for d in mine["detections"]} <= set(CATEGORY_IDS)
    assert det_o["images"]["photo.png"]["image_id"] == 7  # the id the training data gave the file name
    assert len(coco_o) == len(coco_t) and {r["image_id"] for r in coco_o} == {r["image_id"] for r in coco_t}
    assert {r["category_id"] for r in coco_o} == {r["category_id"] for r in coco_t}


def test_infer_on_an_onnx_file_refuses_what_needs_pytorch(exported: tuple[Path, Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tools import infer

    _, onnx_path, images = exported
    assert infer.main(["--checkpoint", str(onnx_path), "--input", str(images), "--tta", "flip", "--tile", "64",
                       "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("infer: error: --tta, --tile: not for an .onnx detector") and err.count("\n") == 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    assert infer.main(["--checkpoint", str(bad), "--input", str(images), "--output", str(tmp_path)]) == 2
    assert "bad.onnx: onnxruntime cannot load it" in capsys.readouterr().err


def test_the_torch_free_modules_import_without_torch() -> None:
    """``import detection`` / ``resbackbone`` re-export lazily (PEP 562): the runtime's modules load without torch,
    and ``from detection import FasterRCNN`` / ``resbackbone.resnet18`` still work (loading it then)."""
    code = textwrap.dedent("""
        import sys
        import detection, resbackbone, resbackbone.errors
        import detection.onnx_predictor, detection.images, detection.results, detection.visualize
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        from detection import FasterRCNN
        from resbackbone import InputError
        assert resbackbone.resnet18().__class__.__name__ == "ResNet" and "torch" in sys.modules
        assert detection.anchors.AnchorGenerator is detection.AnchorGenerator  # submodules as attributes
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "ok", run.stderr[-2000:]


def test_metadata_round_trip_and_refusals() -> None:
    from detection.onnx_predictor import OnnxMetadata
    from resbackbone.errors import CheckpointError

    meta = OnnxMetadata(class_names=["a", "b"], min_size=600, max_size=1000,
                        pixel={"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0], "channel_order": "BGR"},
                        size_divisibility=32, score_thresh=0.05, nms_thresh=0.5, detections_per_image=100, arch="FPN",
                        fixed_size=(608, 800), dataset={"category_ids": [1, 3]}, test_dataset="voc07-test")
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props["input"])["shape"] == [1, 3, 608, 800]
    assert OnnxMetadata.from_props(props) == meta
    with pytest.raises(CheckpointError, match="no 'format'"):
        OnnxMetadata.from_props({}, "x.onnx")
    with pytest.raises(CheckpointError, match="lacks"):
        OnnxMetadata.from_props({k: v for k, v in props.items() if k != "class_names"}, "x.onnx")
    with pytest.raises(CheckpointError, match="version"):
        OnnxMetadata.from_props({**props, "format": json.dumps({"name": "resnet-det/faster-rcnn-onnx",
                                                                "version": 99})})


def test_match_detections_allows_only_what_rounding_can_decide() -> None:
    """A detection may be missing on one side only at the score threshold or at the per-image cap; a moved box, a
    class swap or an extra detection elsewhere is a mismatch."""
    from detection.onnx_predictor import match_detections

    ref = {"boxes": np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]], np.float32),
           "scores": np.array([0.9, 0.6, 0.05002], np.float32), "labels": np.array([0, 1, 2])}

    def match(got: dict, cap: int = 100) -> object:
        return match_detections(got, ref, box_tol=1e-2, score_tol=1e-4, score_thresh=0.05, max_detections=cap)

    same = match({k: v.copy() for k, v in ref.items()})
    assert same.ok and same.matched == 3 and same.max_box_diff == 0.0
    at_threshold = match({k: v[:2] for k, v in ref.items()})  # 0.05002 fell below 0.05 in the other run
    assert at_threshold.ok and at_threshold.matched == 2
    moved = {k: v.copy() for k, v in ref.items()}
    moved["boxes"][1] += 0.5
    assert not match(moved).ok
    swapped = {k: v.copy() for k, v in ref.items()}
    swapped["labels"][0] = 2
    assert not match(swapped).ok
    assert not match({k: v[1:] for k, v in ref.items()}).ok  # the 0.9 detection lost: no cut-off explains it
    ref["scores"][2] = 0.3  # far above the threshold: only the per-image cap can explain its absence
    assert not match({k: v[:2] for k, v in ref.items()}).ok
    assert match({k: v[:2] for k, v in ref.items()}, cap=2).ok
