"""train learns, resumes exactly, writes what score needs; evaluate's metrics match scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from mura_cli.config import EvalConfig, ScoreConfig, TrainConfig
from mura_cli.errors import MuraError
from mura_cli.evaluation import metrics
from mura_cli.evaluation.evaluate import evaluate
from mura_cli.scoring.score import score_folder
from mura_cli.training.train import train

from conftest import learnable_mura


def tiny_train_config(data, out, **kw):
    values = dict(
        arch="resnet10t",
        img_size=64,
        epochs=4,
        batch_size=16,
        freeze_epochs=1,
        lr=3e-3,
        head_lr=1e-2,
        workers=0,
        val_fraction=0.25,
        patience=10,
        rotate=10.0,
    )
    values.update(kw)
    return TrainConfig(data=str(data), out_dir=str(out), **values)


@pytest.fixture(scope="module")
def trained(learnable_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "model"
    return train(tiny_train_config(learnable_folder, out))


def test_training_learns_and_writes_a_complete_model_folder(trained):
    assert trained.val_metrics["auroc"] > 0.9
    names = {p.name for p in trained.out_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "training_log.csv",
        "curves.png",
        "MODEL_CARD.md",
        "checkpoint.pt",
        "split.csv",
        "train_config.json",
    } <= names
    cfg = json.loads((trained.out_dir / "config.json").read_text())
    assert cfg["architecture"] == "resnet10t" and cfg["input_size"] == [1, 64, 64]
    assert cfg["threshold"] == pytest.approx(trained.threshold) and 0 < cfg["threshold"] < 1
    log = pd.read_csv(trained.out_dir / "training_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3, 4] and log["phase"].tolist()[0] == "head"
    assert log["val_auroc"].max() > 0.9
    card = (trained.out_dir / "MODEL_CARD.md").read_text()
    assert "Research use only" in card and "resnet10t" in card


def test_trained_model_scores_with_score(trained, learnable_folder, tmp_path):
    result = score_folder(
        ScoreConfig(
            input=str(learnable_folder / "XR_HAND"),
            out_dir=str(tmp_path / "s"),
            model=str(trained.out_dir),
            workers=0,
        )
    )
    studies = result.studies.dropna(subset=["label"])
    assert roc_auc_score(studies["label"].astype(int), studies["probability"]) > 0.9


class Stop(Exception):
    """Raised from a progress callback: the run is interrupted there, as by Ctrl-C."""


def stop_after(epoch: int):
    def notify(event):
        if event.stage == "epoch" and event.epoch == epoch:
            raise Stop

    return notify


def test_resume_after_interruption_gives_the_same_weights(learnable_folder, tmp_path):
    data = learnable_mura(tmp_path / "data", patients=16, seed=5)
    straight = train(tiny_train_config(data, tmp_path / "straight", epochs=3))

    with pytest.raises(Stop):
        train(tiny_train_config(data, tmp_path / "resumed", epochs=3), notify=stop_after(2))
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = train(tiny_train_config(data, tmp_path / "resumed", epochs=3, resume=True))
    a, b = (
        load_file(str(straight.out_dir / "model.safetensors")),
        load_file(str(resumed.out_dir / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-5, err_msg=key)
    assert resumed.log["epoch"].tolist() == [1, 2, 3]


def test_resume_refuses_another_recipe_and_names_the_fields(learnable_folder, tmp_path):
    from mura_cli.errors import MuraError

    data = learnable_mura(tmp_path / "data", patients=12, seed=6)

    with pytest.raises(Stop):
        train(tiny_train_config(data, tmp_path / "run", epochs=2), notify=stop_after(1))
    with pytest.raises(MuraError, match=r"another recipe: lr \(0\.003 -> 0\.01\), rotate \(10\.0 -> 0\.0\)"):
        train(tiny_train_config(data, tmp_path / "run", epochs=2, lr=1e-2, rotate=0.0, resume=True))
    with pytest.raises(MuraError, match="--resume-changes epochs allows that"):
        train(tiny_train_config(data, tmp_path / "run", epochs=3, resume=True))
    longer = train(
        tiny_train_config(
            data, tmp_path / "run", epochs=3, resume=True, resume_changes=("epochs",), workers=1
        )
    )  # workers may differ freely
    assert longer.log["epoch"].tolist() == [1, 2, 3]


def test_train_refuses_to_overwrite_without_resume(trained, learnable_folder):
    from mura_cli.errors import MuraError

    with pytest.raises(MuraError, match="--resume"):
        train(tiny_train_config(learnable_folder, trained.out_dir))


def test_evaluate_metrics_match_scikit_learn_on_its_own_csv(trained, tmp_path):
    data = learnable_mura(tmp_path / "unseen", patients=20, seed=11)
    result = evaluate(
        EvalConfig(
            data=str(data),
            out_dir=str(tmp_path / "ev"),
            model=str(trained.out_dir),
            workers=0,
            bootstrap=1000,
            pdf=True,
        )
    )
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    studies = pd.read_csv(tmp_path / "ev" / "studies.csv")
    y, p = studies["label"].astype(int), studies["probability"]
    pred = (p >= m["run"]["threshold"]).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    overall = m["study"]["overall"]
    assert overall["auroc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert overall["kappa"]["value"] == pytest.approx(cohen_kappa_score(y, pred))
    assert overall["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
    assert overall["specificity"]["value"] == pytest.approx(tn / (tn + fp))
    assert (studies["prediction"] == pred).all()
    for name in ("auroc", "kappa", "sensitivity", "specificity"):
        low, high = overall[name]["ci"]
        assert low <= overall[name]["value"] <= high
    assert set(m["study"]["per_body_part"]) == {"HAND", "WRIST"}
    per_part = pd.read_csv(tmp_path / "ev" / "per_body_part.csv").set_index("body_part")
    hand = studies[studies["body_part"] == "HAND"]
    assert per_part.loc["HAND", "auroc"] == pytest.approx(roc_auc_score(hand["label"], hand["probability"]))
    assert {"youden", "model", "sensitivity_0.9"} <= set(overall["operating_points"])
    assert overall["operating_points"]["sensitivity_0.9"]["sensitivity"] >= 0.9
    for name in ("report.pdf", "roc_study.png", "reliability_study.png", "images.csv"):
        assert (tmp_path / "ev" / name).stat().st_size > 1000
    assert result.metrics["run"]["split"] == "all"


def test_bootstrap_replicates_equal_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.round(np.clip(y * 0.3 + rng.normal(0.4, 0.2, 60), 0, 1), 2)  # rounded: ties happen
    weights = metrics.resample_weights(60, 5, seed=1)
    fast = metrics.weighted_metrics(y, p, 0.5, weights)
    for r in range(5):
        w = weights[r]
        assert fast["auroc"][r] == pytest.approx(roc_auc_score(y, p, sample_weight=w))
        assert fast["kappa"][r] == pytest.approx(
            cohen_kappa_score(y, (p >= 0.5).astype(int), sample_weight=w)
        )


def test_image_level_bootstrap_draws_whole_studies():
    weights = metrics.resample_weights(6, 50, seed=0, groups=["a", "a", "b", "b", "b", "c"])
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 2] == weights[:, 4]).all()
    assert (weights[:, [0, 2, 5]].sum(axis=1) == 3).all()  # three studies drawn each time


def test_localisation_scores_on_hand_made_heatmaps():
    box = (10, 10, 20, 20)
    assert metrics.pointing_hit((21, 15), [box])  # inside the 10% margin
    assert not metrics.pointing_hit((23, 15), [box])
    heat = np.zeros((40, 40))
    heat[10:20, 10:20] = 1.0
    heat[30:35, 30:35] = 1.0  # 25 of 125 units outside
    assert metrics.energy_inside(heat, [box]) == pytest.approx(100 / 125)
    assert metrics.energy_inside(np.zeros((5, 5)), [box]) == 0.0


def test_model_card_is_plain_markdown(trained):
    card = (trained.out_dir / "MODEL_CARD.md").read_text()
    assert '"arch": "resnet10t"' in card and "&#34;" not in card and "&quot;" not in card


def test_a_recipe_field_added_since_the_checkpoint_is_no_difference(tmp_path):
    from mura_cli.training import checkpoints as training_io

    config = tiny_train_config("data", tmp_path, resume=True)
    older = {k: v for k, v in config.to_dict().items() if k != "pooling"}  # written before --pooling existed
    training_io.check_same_recipe(older, config, tmp_path)  # no error
    from mura_cli.errors import MuraError

    with pytest.raises(MuraError, match="pooling"):
        training_io.check_same_recipe(
            older, tiny_train_config("data", tmp_path, resume=True, pooling="lse"), tmp_path
        )


def _scripted_validation(monkeypatch, aurocs):
    """Validation AUROC follows ``aurocs`` epoch by epoch (the rest of validation runs for real)."""
    from mura_cli.training import train as train_module

    real, script = train_module.validate, iter(aurocs)

    def validate(*args):
        metrics, images = real(*args)
        return {**metrics, "auroc": next(script)}, images

    monkeypatch.setattr(train_module, "validate", validate)


def test_early_stopping_triggers_after_patience_epochs_without_improvement(
    learnable_folder, tmp_path, monkeypatch
):
    _scripted_validation(monkeypatch, [0.60, 0.70, 0.65, 0.64, 0.90, 0.95])
    result = train(
        tiny_train_config(
            learnable_folder, tmp_path / "m", epochs=6, patience=2, freeze_epochs=0, img_size=32
        )
    )
    assert result.log["epoch"].tolist() == [1, 2, 3, 4]  # epochs 3 and 4 did not beat epoch 2: stop
    assert result.best_epoch == 2 and result.best_metric == pytest.approx(0.70)


def test_when_no_epoch_can_be_chosen_the_last_is_kept_and_the_folder_says_so(
    learnable_folder, tmp_path, monkeypatch
):
    _scripted_validation(monkeypatch, [None, None])  # no epoch has a score to compare
    result = train(
        tiny_train_config(learnable_folder, tmp_path / "m", epochs=2, freeze_epochs=0, img_size=32)
    )
    assert result.best_epoch == 2  # the weights kept are the last epoch's, not "epoch 0"
    assert "no epoch had a validation auroc" in result.note and "last epoch's weights" in result.note
    provenance = json.loads((result.out_dir / "config.json").read_text())["provenance"]
    assert provenance["best_epoch"] == 2 and provenance["choice_note"] == result.note


def test_validation_scores_of_one_label_end_training_with_a_one_line_error(
    learnable_folder, tmp_path, monkeypatch
):
    from mura_cli.training import train as train_module

    real = train_module.validate_images

    def positives_unscored(*args, **kwargs):  # e.g. every fractured validation image failed to decode
        images = real(*args, **kwargs)
        return images.assign(probability=images["probability"].where(images["label"] == 0))

    monkeypatch.setattr(train_module, "validate_images", positives_unscored)
    with pytest.raises(MuraError, match=r"hold one label only, so no calibration .*checkpoint\.pt"):
        train(tiny_train_config(learnable_folder, tmp_path / "m", epochs=1, freeze_epochs=0, img_size=32))
    assert (tmp_path / "m" / "checkpoint.pt").is_file()  # the epoch's work is kept


def test_plateau_schedule_cuts_the_learning_rate_when_validation_stalls(
    learnable_folder, tmp_path, monkeypatch
):
    _scripted_validation(monkeypatch, [0.60, 0.70, 0.69, 0.68, 0.67])
    result = train(
        tiny_train_config(
            learnable_folder,
            tmp_path / "m",
            epochs=5,
            patience=10,
            freeze_epochs=0,
            img_size=32,
            scheduler="plateau",
            lr=1e-3,
        )
    )
    lrs = result.log["lr"].tolist()
    assert lrs[:4] == pytest.approx([1e-3] * 4)  # epochs 3 and 4 stall: one is tolerated, the second ...
    assert lrs[4] == pytest.approx(1e-4)  # ... cuts the rate tenfold for epoch 5


def test_determinism_is_asked_for_and_then_given_back():
    import torch

    from mura_cli.training.train import determinism, wants_determinism

    assert not torch.are_deterministic_algorithms_enabled()
    with determinism(True):
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    assert wants_determinism(tiny_train_config("d", "o"), "cpu") is True  # default: on for the CPU
    assert wants_determinism(tiny_train_config("d", "o", deterministic=False), "cpu") is False


def test_training_leaves_the_process_settings_as_it_found_them(trained):
    import torch

    assert not torch.are_deterministic_algorithms_enabled()  # the fixture trained deterministically (CPU)
    assert json.loads((trained.out_dir / "train_config.json").read_text())["deterministic"] is None


def test_weight_averaging_judges_and_ships_the_average_and_resumes_exactly(
    learnable_folder, tmp_path, monkeypatch
):
    import torch

    data = learnable_mura(tmp_path / "data", patients=12, seed=7)
    _scripted_validation(monkeypatch, [0.6, 0.7, 0.8, 0.6, 0.7, 0.8])  # the last epoch is the best, each run
    kw = dict(epochs=3, ema_decay=0.9, freeze_epochs=0, img_size=32)
    straight = train(tiny_train_config(data, tmp_path / "straight", **kw))
    shipped = load_file(str(straight.out_dir / "model.safetensors"))
    checkpoint = torch.load(straight.out_dir / "checkpoint.pt", weights_only=True)
    average = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items()}
    raw = checkpoint["model"]
    weights = [k for k in shipped if k.endswith("weight") and shipped[k].is_floating_point()]
    assert all(torch.equal(shipped[k], average[k].contiguous()) for k in weights)  # the average ships
    assert not all(torch.allclose(shipped[k], raw[k].contiguous()) for k in weights)  # not the last step

    with pytest.raises(Stop):
        train(tiny_train_config(data, tmp_path / "resumed", **kw), notify=stop_after(1))
    resumed = train(tiny_train_config(data, tmp_path / "resumed", resume=True, **kw))
    again = load_file(str(resumed.out_dir / "model.safetensors"))
    for key in shipped:
        np.testing.assert_allclose(shipped[key].numpy(), again[key].numpy(), atol=1e-5, err_msg=key)


def test_evaluation_report_stays_inside_the_page(trained, tmp_path, monkeypatch):
    from mura_cli.report import pdf as report_pdf

    from conftest import boxes_past_the_right_margin

    written = {}
    real = report_pdf.write_pdf

    def capture(html, path, pictures=None):
        written.update(html=html, pictures=pictures or {})
        return real(html, path, pictures)

    monkeypatch.setattr(report_pdf, "write_pdf", capture)
    data = learnable_mura(tmp_path / "unseen", patients=12, seed=12)
    evaluate(
        EvalConfig(
            data=str(data), out_dir=str(tmp_path / "ev"), model=str(trained.out_dir), workers=0, pdf=True
        )
    )
    assert "0." in written["html"] and "\u2013" in written["html"]  # values with their CIs were laid out
    assert boxes_past_the_right_margin(written["html"], written["pictures"]) == []


def test_validation_runs_the_deletion_test_on_the_boxed_positives(tmp_path, monkeypatch):
    from mura_cli.evaluation import faithfulness

    real, compared = faithfulness.mean_drops, []

    def from_cache_and_from_disk(*args):  # the test on the decoded cache, and again decoding the files
        source = args[7]
        compared.append((source is not None, real(*args), real(*args[:7])))
        return compared[-1][1]

    monkeypatch.setattr(faithfulness, "mean_drops", from_cache_and_from_disk)
    boxes = tmp_path / "boxes.csv"
    data = learnable_mura(tmp_path / "data", boxes=boxes)
    result = train(tiny_train_config(data, tmp_path / "m", epochs=3, freeze_epochs=0, boxes=str(boxes)))
    assert len(compared) == 3 and all(cached for cached, _, _ in compared)
    for _, cached, decoded in compared:  # the cache's pixels are the files': the same drops
        assert cached["deletion"] == pytest.approx(decoded["deletion"], abs=1e-6)
        assert cached["elsewhere"] == pytest.approx(decoded["elsewhere"], abs=1e-6)
    log = result.log
    assert log["val_deletion_drop"].notna().all() and log["val_elsewhere_drop"].notna().all()
    # the model finds the positives by their square: filling it costs more than filling elsewhere
    last = log.iloc[-1]
    assert last["val_deletion_drop"] > max(last["val_elsewhere_drop"], 0.0) + 0.05
    written = pd.read_csv(result.out_dir / "training_log.csv")
    assert written["val_deletion_drop"].to_numpy() == pytest.approx(
        log["val_deletion_drop"].to_numpy(), abs=1e-6
    )


def test_auroc_plus_deletion_monitor_weighs_the_deletion_drop(learnable_folder, tmp_path, monkeypatch):
    from mura_cli.evaluation import faithfulness
    from mura_cli.training import train as train_module

    aurocs, drops = [0.80, 0.75, 0.85], [0.00, 0.30, 0.05]  # AUROC alone would choose epoch 3
    real = train_module.study_metrics

    def study_metrics(images):
        metrics, studies = real(images)
        return {**metrics, "auroc": aurocs.pop(0) if aurocs else metrics["auroc"]}, studies

    monkeypatch.setattr(train_module, "study_metrics", study_metrics)
    monkeypatch.setattr(
        faithfulness, "mean_drops", lambda *a, **k: {"deletion": drops.pop(0), "elsewhere": 0.0, "n": 1}
    )
    boxes = tmp_path / "boxes.csv"
    pd.DataFrame(
        [("XR_WRIST/patient00000/study1_negative/image1.png", 0, 0, 8, 8)],
        columns=["path", "x0", "y0", "x1", "y1"],
    ).to_csv(boxes, index=False)
    with pytest.raises(MuraError, match="no validation positive has a box"):
        train(
            tiny_train_config(learnable_folder, tmp_path / "none", boxes=str(boxes), monitor="auroc+deletion")
        )
    assert not (tmp_path / "none").exists()  # refused before the model folder was made
    pd.DataFrame({"path": ["image1.png"], "x0": [0], "y0": [0], "x1": [8], "y1": [8]}).to_csv(
        boxes, index=False
    )
    result = train(
        tiny_train_config(
            learnable_folder,
            tmp_path / "m",
            epochs=3,
            freeze_epochs=0,
            img_size=32,
            boxes=str(boxes),
            monitor="auroc+deletion",
        )
    )
    assert result.best_epoch == 2 and result.best_metric == pytest.approx(1.05)
    assert result.log["val_deletion_drop"].tolist() == pytest.approx([0.00, 0.30, 0.05])
    chosen = json.loads((result.out_dir / "config.json").read_text())["provenance"]["best_epoch_validation"]
    assert chosen["val_deletion_drop"] == pytest.approx(0.30) and chosen["val_auroc"] == pytest.approx(0.75)
    assert chosen["monitor_score"] == pytest.approx(1.05)


def test_auroc_plus_deletion_monitor_needs_boxes():
    with pytest.raises(ValueError, match="needs boxes"):
        TrainConfig(data="-", out_dir="x", monitor="auroc+deletion")


def test_evaluate_pdf_makes_pictures_of_the_gallery_images_only(tiny_model, tmp_path, monkeypatch):
    from mura_cli.evaluation import evaluate as evaluate_module
    from mura_cli.report import pdf as report_pdf

    drawn, shown = [], []
    real_thumbnails, real_render = evaluate_module.make_thumbnails, report_pdf.render_eval_report

    def thumbnails(*args, **kwargs):
        drawn.append(1)
        return real_thumbnails(*args, **kwargs)

    def render(result, out_dir, path, entries):
        shown.extend(picture for entry in entries for _, _, picture in entry.images)
        return real_render(result, out_dir, path, entries)

    monkeypatch.setattr(evaluate_module, "make_thumbnails", thumbnails)
    monkeypatch.setattr(report_pdf, "render_eval_report", render)
    data = learnable_mura(tmp_path / "data", patients=12, seed=3)
    done = evaluate(
        EvalConfig(
            data=str(data),
            out_dir=str(tmp_path / "ev"),
            model=str(tiny_model),
            workers=0,
            pdf=True,
            gallery=2,
        )
    )
    picked = {study for ids in done.metrics["gallery"].values() for study in ids}
    in_gallery = done.images[done.images["study_id"].isin(picked)]
    assert 0 < len(in_gallery) < len(done.images)
    assert len(drawn) == len(in_gallery)  # not one picture per image evaluated
    assert len(shown) == len(in_gallery) and all(picture is not None for picture in shown)
    assert (tmp_path / "ev" / "report.pdf").stat().st_size > 0
