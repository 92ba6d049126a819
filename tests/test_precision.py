"""Mixed precision keeps the answer, or `auto` does not use it: checks, records and the auto choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mura_cli.inference import device as device_module
from mura_cli.inference import precision_check
from mura_cli.inference.device import resolve_precision
from mura_cli.inputs.discover import discover
from mura_cli.model.factory import load_model, resolve_model_dir

CPU = torch.device("cpu")
PASSED = {"cpu": {"bf16": {"passed": True, "p99": 0.002, "max": 0.004}}}
FAILED = {"cpu": {"bf16": {"passed": False, "p99": 0.4, "max": 0.6}}}


@pytest.fixture()
def native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)


def test_auto_falls_back_to_fp32_for_an_unverified_model(native_bf16):
    precision, why = resolve_precision("auto", CPU, checks={})
    assert precision == "fp32" and "not verified" in why and "check-precision" in why


def test_auto_uses_bf16_only_where_the_check_passed(native_bf16):
    assert resolve_precision("auto", CPU, checks=PASSED)[0] == "bf16"
    precision, why = resolve_precision("auto", CPU, checks=FAILED)
    assert precision == "fp32" and "beyond rounding" in why
    assert (
        resolve_precision("auto", CPU, checks={"cuda": PASSED["cpu"]})[0] == "fp32"
    )  # another kind of device


def test_explicit_precision_is_kept_and_training_auto_is_fp32_on_cpu(native_bf16):
    assert resolve_precision("bf16", CPU, checks={}) == ("bf16", "asked for")
    assert resolve_precision("auto", CPU, training=True)[0] == "fp32"


def test_deviation_counts_flips_and_peak_moves():
    p0 = np.array([0.1, 0.49, 0.8, np.nan])
    p1 = np.array([0.1, 0.51, 0.8, 0.5])
    k0 = np.array([[0, 0], [10, 10], [40, 40], [-1, -1]])
    k1 = np.array([[0, 0], [10, 12], [8, 8], [-1, -1]])
    stats = precision_check.deviation((p0, k0), (p1, k1), threshold=0.5, cell=16)
    assert stats["images"] == 3 and stats["flips"] == 1 and stats["max"] == pytest.approx(0.02)
    assert stats["same_peak_cell"] == pytest.approx(2 / 3) and stats["peaks_moved_over_10px"] == 1
    assert not stats["passed"]


def test_deviation_counts_a_map_gone_flat_as_a_moved_peak():
    """A flat map has no peak (-1): both flat agree, one flat beside a peak does not."""
    p = np.array([0.2, 0.3, 0.4])
    k0 = np.array([[5, 5], [-1, -1], [20, 20]])
    k1 = np.array([[5, 5], [-1, -1], [-1, -1]])  # the third image's map went flat
    stats = precision_check.deviation((p, k0), (p, k1), threshold=0.5, cell=16)
    assert stats["same_peak_cell"] == pytest.approx(2 / 3) and stats["peaks_moved_over_10px"] == 0


def test_check_precision_records_into_the_model_config(tiny_model, tmp_path, mura_folder):
    import shutil

    model_dir = shutil.copytree(tiny_model, tmp_path / "model")
    loaded = load_model(model_dir)
    records = list(discover(mura_folder).images)
    results = precision_check.check_precisions(loaded, records, CPU, ["bf16"], batch_size=8)
    assert results["bf16"]["images"] == len(records)
    assert 0 <= results["bf16"]["median"] <= results["bf16"]["max"] < 1
    precision_check.record_checks(model_dir, "cpu", results)
    stored = json.loads((model_dir / "config.json").read_text())["precision_checks"]["cpu"]["bf16"]
    assert stored["passed"] == results["bf16"]["passed"] and stored["torch"] == torch.__version__
    assert load_model(model_dir).config.precision_checks["cpu"]["bf16"]["p99"] == pytest.approx(
        results["bf16"]["p99"]
    )


def test_shipped_model_precisions_that_auto_may_choose_keep_the_answer(shared_dicom, rg3_files, tmp_path):
    """The shipped model on real radiographs: every reduced precision its record lets `auto` choose
    stays within the bounds here too; one it may not choose is never chosen."""
    import shutil

    loaded = load_model(resolve_model_dir(None))
    folder = tmp_path / "real"
    folder.mkdir()
    for source in [*rg3_files, *sorted(shared_dicom.glob("*.dcm"))[:4]]:
        shutil.copy(source, folder / source.name)
    records = [r for r in discover(folder).images if not r.error]
    assert len(records) >= 3
    checks = loaded.config.precision_checks.get("cpu", {})
    assert checks, "the shipped model carries no precision check for the CPU"
    for precision, record in checks.items():
        if record["passed"]:
            found = precision_check.check_precisions(loaded, records, CPU, [precision])[precision]
            assert found["max"] <= precision_check.BOUNDS["max"], found
            assert found["flips"] == 0, found
        else:
            assert resolve_precision("auto", CPU, checks=loaded.config.precision_checks)[0] == "fp32"
