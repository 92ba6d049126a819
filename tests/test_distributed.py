"""Training under torchrun: two gloo processes on the CPU, DistributedDataParallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from test_train_evaluate import tiny_train_config

from mura_cli.training.train import train

COMMON = [
    "--arch",
    "resnet10t",
    "--img-size",
    "64",
    "--batch-size",
    "16",
    "--freeze-epochs",
    "1",
    "--lr",
    "3e-3",
    "--head-lr",
    "1e-2",
    "--workers",
    "0",
    "--val-fraction",
    "0.25",
    "--patience",
    "10",
    "--rotate",
    "10",
    "--device",
    "cpu",
    "--quiet",
]


def torchrun(data, out, *extra, processes: int = 2):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "mura_cli",
        "train",
        str(data),
        "--out",
        str(out),
        *COMMON,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(learnable_folder, tmp_path):
    one = train(tiny_train_config(learnable_folder, tmp_path / "one", epochs=3))
    done = torchrun(learnable_folder, tmp_path / "two", "--epochs", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    two_auroc = cfg["provenance"]["validation_study_metrics"]["auroc"]
    assert cfg["provenance"]["processes"] == 2
    assert two_auroc > 0.85 and abs(two_auroc - one.val_metrics["auroc"]) < 0.1
    log = pd.read_csv(tmp_path / "two" / "training_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]  # written once, by rank 0
    assert done.stdout.count("best epoch") + done.stderr.count("best epoch") <= 1


@pytest.mark.slow
def test_distributed_resume_continues_the_log(learnable_folder, tmp_path):
    first = torchrun(learnable_folder, tmp_path / "m", "--epochs", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = pd.read_csv(tmp_path / "m" / "training_log.csv")
    resumed = torchrun(
        learnable_folder, tmp_path / "m", "--epochs", "3", "--resume", "--resume-changes", "epochs"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = pd.read_csv(tmp_path / "m" / "training_log.csv")
    assert after["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(
        after.iloc[:2][["epoch", "train_loss", "val_auroc"]], before[["epoch", "train_loss", "val_auroc"]]
    )


@pytest.mark.slow
def test_a_failure_on_rank_0_in_the_validation_deletion_test_ends_every_process(tmp_path):
    """Rank 0 alone runs the validation deletion test; when it fails there, the other rank must not
    wait for its figures until a timeout: the run ends promptly, with rank 0's error in its output."""
    import time

    from conftest import learnable_mura

    boxes = tmp_path / "boxes.csv"
    data = learnable_mura(tmp_path / "data", patients=16, boxes=boxes)
    script = tmp_path / "failing_deletion_test.py"
    script.write_text(
        "import sys\n"
        "from mura_cli.evaluation import faithfulness\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('the deletion test broke on rank 0')\n"
        "faithfulness.mean_drops = broken\n"
        "from mura_cli.cli.commands import main\n"
        "sys.argv = ['mura-cli', *sys.argv[1:]]\n"
        "main()\n"
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        "train",
        str(data),
        "--out",
        str(tmp_path / "m"),
        *COMMON,
        "--epochs",
        "2",
        "--freeze-epochs",
        "0",
        "--img-size",
        "32",
        "--boxes",
        str(boxes),
    ]
    # no re-exec for the malloc tuning: it would start a fresh interpreter without the patch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MURA_CLI_MALLOC_TUNING": "0"}
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode != 0
    assert "the deletion test broke on rank 0" in done.stdout + done.stderr
    assert time.monotonic() - started < 240  # ended by the failure, not by a collective's timeout
