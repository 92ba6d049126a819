"""Shared fixtures: tiny timm models with random weights in the model-folder format, synthetic
MURA-layout studies, and real DICOM radiographs (pydicom-data, ../shared/dicom when present)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from mura_cli.config import ModelConfig
from mura_cli.model import cam
from mura_cli.model.factory import create_model, save_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _decoded_cache_in_tmp(tmp_path_factory):
    """Training's decoded cache and the engine exports go to temporary folders, never the user's
    ~/.cache (subprocesses too)."""
    import os

    os.environ["MURA_CLI_CACHE"] = str(tmp_path_factory.mktemp("decoded-cache"))
    os.environ["MURA_CLI_ENGINE_CACHE"] = str(tmp_path_factory.mktemp("engine-cache"))


SHARED_DICOM = REPO.parent / "shared" / "dicom"


def make_model_dir(folder: Path, architecture: str, size: int = 64, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(architecture=architecture, input_size=(3, size, size), name=folder.name, **overrides)
    model = create_model(cfg)
    # random classifier weights with a visible spread, so probabilities differ between images, and
    # signed so that the class activation maps of radiograph-like images are not all zero (a random
    # head can score every cell negative: a flat map, which has no peak to test)
    with torch.no_grad():
        model.get_classifier().weight.mul_(20.0)
        probe = torch.nn.functional.interpolate(
            torch.from_numpy(radiograph(0)[None, None].astype(np.float32)), size=(size, size)
        )
        features = model.eval().forward_features(probe.repeat(1, cfg.input_size[0], 1, 1) * 2 - 1)
        if features.ndim == 4 and float(cam.cell_logits(features, model.get_classifier()).max()) <= 0:
            model.get_classifier().weight.neg_()
    return save_model(model, cfg, folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny-effnet", "test_efficientnet")


@pytest.fixture(scope="session")
def resnet_model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny-resnet", "resnet10t", size=64)


def radiograph(seed: int, height: int = 90, width: int = 70) -> np.ndarray:
    """A synthetic 'bone' image in [0, 1]: dark background, a bright elongated shape, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    bone = np.exp(-(((xx - cx) / (width * 0.12)) ** 2 + ((yy - cy) / (height * 0.35)) ** 2))
    image = 0.1 + 0.75 * bone + rng.normal(0, 0.03, size=bone.shape)
    return np.clip(image, 0, 1)


def save_png8(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(array * 255).astype(np.uint8), mode="L").save(path, format="PNG")
    return path


def save_png16(array8: np.ndarray, path: Path) -> Path:
    """16-bit twin of an 8-bit image: v * 257 maps 0..255 exactly onto 0..65535."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.rint(array8 * 255).astype(np.uint16) * 257
    Image.fromarray(values).save(path, format="PNG")
    return path


MURA_STUDIES = [
    ("XR_WRIST", "patient00001", "study1_positive", 3),
    ("XR_WRIST", "patient00001", "study2_negative", 2),
    ("XR_ELBOW", "patient00002", "study1_negative", 1),
    ("XR_HAND", "patient00003", "study1_positive", 2),
]


@pytest.fixture()
def mura_folder(tmp_path) -> Path:
    """A small MURA-v1.1-style tree with 8-bit PNG images, plus hidden and non-image files."""
    root = tmp_path / "MURA-v1.1" / "valid"
    seed = 0
    for part, patient, study, count in MURA_STUDIES:
        for k in range(1, count + 1):
            seed += 1
            save_png8(radiograph(seed), root / part / patient / study / f"image{k}.png")
    (root / "XR_WRIST" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


@pytest.fixture(scope="session")
def rg3_files() -> tuple[Path, Path]:
    """A real extremity CR (MONOCHROME1): uncompressed and lossless JPEG 2000 (pydicom-data, MIT)."""
    return Path(get_testdata_file("RG3_UNCR.dcm")), Path(get_testdata_file("RG3_J2KR.dcm"))


@pytest.fixture()
def shared_dicom() -> Path:
    if not SHARED_DICOM.is_dir():
        pytest.skip("../shared/dicom not present")
    return SHARED_DICOM


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(source, target))


def learnable_mura(root: Path, patients: int = 40, seed: int = 0, boxes: Path | None = None) -> Path:
    """MURA-layout studies where positives carry a bright square: a tiny model can learn it. With
    ``boxes``, the squares' boxes are written there as a boxes CSV (paths relative to ``root``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(patients):
        part = ("XR_WRIST", "XR_HAND")[patient % 2]
        for study in range(2):
            label = int(rng.integers(0, 2))
            folder = (
                root
                / part
                / f"patient{patient:05d}"
                / f"study{study + 1}_{'positive' if label else 'negative'}"
            )
            for k in range(2):
                image = rng.normal(0.3, 0.05, (80, 64))
                if label:
                    y, x = rng.integers(15, 65), rng.integers(15, 50)
                    image[y - 6 : y + 6, x - 6 : x + 6] += 0.6
                    rel = (folder / f"image{k + 1}.png").relative_to(root).as_posix()
                    rows.append((rel, x - 6, y - 6, x + 6, y + 6))
                save_png8(np.clip(image, 0, 1), folder / f"image{k + 1}.png")
    if boxes is not None:
        pd.DataFrame(rows, columns=["path", "x0", "y0", "x1", "y1"]).to_csv(boxes, index=False)
    return root


@pytest.fixture(scope="session")
def learnable_folder(tmp_path_factory) -> Path:
    return learnable_mura(tmp_path_factory.mktemp("learnable") / "data")


def boxes_past_the_right_margin(html: str, pictures: dict) -> list[tuple[int, str, float]]:
    """(page, tag, points past the margin) of every table, cell, picture or paragraph of a report's
    layout that reaches beyond the right edge of its page's content area."""
    from weasyprint import HTML

    from mura_cli.report.render import _fetcher
    from mura_cli.resources import data_dir

    document = HTML(
        string=html, base_url=str(data_dir("report_templates")), url_fetcher=_fetcher(pictures)
    ).render()
    past = []
    for number, page in enumerate(document.pages, 1):
        box = page._page_box
        right = box.content_box_x() + box.width
        for d in box.descendants():
            if d.element_tag in ("table", "td", "th", "img", "p") and hasattr(d, "border_width"):
                over = d.border_box_x() + d.border_width() - right
                if over > 0.5:
                    past.append((number, d.element_tag, round(over, 1)))
    return past
