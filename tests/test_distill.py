"""train --distill-from: a teacher's calibrated probabilities as soft targets beside the labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_train_evaluate import tiny_train_config

from mura_cli.config import ScoreConfig
from mura_cli.errors import ModelError, MuraError
from mura_cli.model.factory import file_sha256
from mura_cli.scoring.score import score_folder
from mura_cli.training import distill, losses
from mura_cli.training.augment import AugmentedDataset
from mura_cli.training.erasing import lesion_erasing
from mura_cli.training.train import train


def test_weighted_bce_of_hard_targets_is_the_class_weighted_bce():
    logits = torch.tensor([-2.0, -0.3, 0.0, 1.5, 4.0])
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    w_pos, w_neg = torch.full((5,), 0.8), torch.full((5,), 0.2)
    expected = F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * torch.where(
        labels > 0.5, w_pos, w_neg
    )
    assert torch.allclose(losses.weighted_bce(logits, labels, w_pos, w_neg), expected, atol=1e-6)


def test_weighted_bce_of_a_soft_target_is_lowest_at_the_class_weighted_logit():
    """For target t and class weights w1, w0 the best logit is log(w1 t / (w0 (1 - t))): the soft
    target shifts the logit by the class weights just as the labels do."""
    grid = torch.linspace(-6, 6, 120001)
    for t, w1, w0 in ((0.3, 1.0, 1.0), (0.3, 0.8, 0.2), (0.9, 0.25, 0.75)):
        loss = losses.weighted_bce(grid, torch.tensor(t), torch.tensor(w1), torch.tensor(w0))
        best = float(grid[loss.argmin()])
        assert best == pytest.approx(np.log(w1 * t / (w0 * (1 - t))), abs=1e-3)


def test_soft_targets_mix_the_label_and_the_teacher():
    labels, teacher = np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.4, 0.0])
    assert distill.soft_targets(labels, teacher, 0.25).tolist() == pytest.approx([0.975, 0.05, 0.85, 0.0])
    assert distill.soft_targets(labels, teacher, 0.0).tolist() == [1, 0, 1, 0]
    assert distill.soft_targets(labels, None, 0.5).tolist() == [1, 0, 1, 0]


class _Canvases(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return {"image": torch.full((1, 32, 32), 100, dtype=torch.uint8), "error": "", "index": index}


def test_training_items_carry_their_soft_target_and_an_erased_lesion_is_negative():
    from mura_cli.inputs.discover import ImageRecord

    records = [
        ImageRecord(Path(f"/x/{k}.png"), f"{k}.png", "raster", f"s{k}", body_part="XR_HAND", label=k % 2)
        for k in range(3)
    ]
    items = AugmentedDataset(_Canvases(3), records, None, targets=[0.1, 0.7, 0.2])
    assert [items[k]["target"] for k in range(3)] == [0.1, 0.7, 0.2]
    assert [AugmentedDataset(_Canvases(3), records, None)[k]["target"] for k in range(3)] == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 targets for 3 records"):
        AugmentedDataset(_Canvases(3), records, None, targets=[0.1, 0.2])
    mask = torch.zeros((1, 64, 64), dtype=torch.uint8)
    mask[0, 10:20, 10:20] = 1
    image = torch.randint(60, 200, (1, 64, 64), dtype=torch.uint8)
    item = {"image": image, "box_mask": mask, "has_boxes": True, "label": 1, "target": 0.8, "error": ""}
    erased = next(
        out
        for seed in range(50)
        if (out := lesion_erasing(item, 0.5, torch.Generator().manual_seed(seed)))["erased"] == "lesion"
    )
    assert erased["label"] == 0 and erased["target"] == 0.0


@pytest.fixture(scope="module")
def teacher(learnable_folder, tmp_path_factory):
    return train(tiny_train_config(learnable_folder, tmp_path_factory.mktemp("teacher") / "model"))


def test_student_learns_from_the_teachers_probabilities_and_says_so(teacher, learnable_folder, tmp_path):
    student = train(
        tiny_train_config(
            learnable_folder,
            tmp_path / "student",
            epochs=2,
            distill_from=str(teacher.out_dir),
            distill_weight=0.5,
        ),
        notify=(events := []).append,
    )
    assert any("with the teacher" in (event.message or "") for event in events)  # the wait is said
    taught = pd.read_csv(student.out_dir / distill.TEACHER_FILE)
    split = pd.read_csv(student.out_dir / "split.csv")
    assert sorted(taught["path"]) == sorted(split.loc[split["side"] == "train", "rel_path"])
    # the probabilities are the teacher's, as `score` gives them for the same images
    scored = score_folder(
        ScoreConfig(
            input=str(learnable_folder),
            out_dir=str(tmp_path / "s"),
            model=str(teacher.out_dir),
            workers=0,
            precision="fp32",
        )
    ).images
    scored = scored.set_index("path")["probability"]
    assert np.allclose(taught["teacher_probability"], scored.loc[taught["path"]].to_numpy(), atol=1e-5)
    assert taught["teacher_probability"].between(0, 1).all() and taught["teacher_probability"].std() > 0.1
    provenance = json.loads((student.out_dir / "config.json").read_text())["provenance"]
    (source,) = provenance["distilled_from"]["teachers"]
    assert source["weights_sha256"] == file_sha256(teacher.out_dir / "model.safetensors")
    assert source["split_checked"] is True  # the teacher's split.csv was read for the leak check
    assert source["validation_auroc"] == pytest.approx(teacher.val_metrics["auroc"])
    # the teacher trained on the student's training images: every target is in sample, and says so
    assert provenance["distilled_from"]["images_out_of_fold"] == 0
    assert not taught["out_of_fold"].any()
    assert provenance["recipe"]["distill_from"] == [str(teacher.out_dir)]
    assert provenance["recipe"]["distill_weight"] == 0.5
    assert student.val_metrics["auroc"] > 0.8


def test_a_missing_or_leaking_teacher_is_refused_before_the_folder_is_made(
    teacher, learnable_folder, tmp_path
):
    with pytest.raises(ModelError, match="--distill-from.*no-such-teacher"):
        train(tiny_train_config(learnable_folder, tmp_path / "student", distill_from="no-such-teacher"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        train(tiny_train_config(learnable_folder, tmp_path / "student", distill_from=str(tmp_path / "empty")))
    leaky = tmp_path / "leaky"
    shutil.copytree(teacher.out_dir, leaky)
    split = pd.read_csv(leaky / "split.csv")
    split.assign(side="train").to_csv(leaky / "split.csv", index=False)  # it saw every image
    with pytest.raises(MuraError, match=r"trained on \d+ of this run's validation images"):
        train(tiny_train_config(learnable_folder, tmp_path / "student", distill_from=str(leaky)))
    # a split in another path form (a manifest's paths against a folder's) cannot be checked
    split.assign(rel_path="elsewhere/" + split["rel_path"]).to_csv(leaky / "split.csv", index=False)
    with pytest.raises(MuraError, match="split.csv names none of this run's images"):
        train(tiny_train_config(learnable_folder, tmp_path / "student", distill_from=str(leaky)))
    (leaky / "split.csv").write_text("rel_path,part\na.png,train\n")
    with pytest.raises(MuraError, match=r"--distill-from: .*split.csv: a split file needs the columns"):
        train(tiny_train_config(learnable_folder, tmp_path / "student", distill_from=str(leaky)))
    assert not (tmp_path / "student").exists()


def test_the_step_learns_from_the_target_not_the_label(tmp_path):
    from test_box_supervision import _toy_batch, _trainer

    trainer = _trainer(0.0, tmp_path)
    batch = _toy_batch(np.random.default_rng(0), n=8)
    batch["target"] = torch.full((8,), 0.3, dtype=torch.float64)  # labels 1, targets 0.3
    with torch.no_grad():
        trainer.model.get_classifier().bias.fill_(3.0)  # confident logits: the two targets' losses differ
    trainer.model.eval()  # the same logits before and during the step (no batch statistics)
    with torch.no_grad():
        logits = trainer.model(trainer.prepare(batch["image"]))[:, 0]
    trainer.model.train()
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    loss, _, _ = trainer.step(batch)
    ones = torch.ones(8)
    assert loss == pytest.approx(
        float(losses.weighted_bce(logits, torch.full((8,), 0.3), ones, ones).mean()), rel=1e-5
    )
    assert loss > 10 * float(losses.weighted_bce(logits, ones, ones, ones).mean())  # not the label's


def test_resume_with_a_teacher_gives_the_same_weights_and_refuses_a_changed_teacher(
    teacher, learnable_folder, tmp_path
):
    from test_train_evaluate import Stop, stop_after

    mine = tmp_path / "teacher"
    shutil.copytree(teacher.out_dir, mine)
    kw = dict(epochs=2, freeze_epochs=0, distill_from=str(mine))
    whole = train(tiny_train_config(learnable_folder, tmp_path / "whole", **kw))
    with pytest.raises(Stop):
        train(tiny_train_config(learnable_folder, tmp_path / "part", **kw), notify=stop_after(1))
    resumed = train(tiny_train_config(learnable_folder, tmp_path / "part", resume=True, **kw))
    a, b = load_file(whole.out_dir / "model.safetensors"), load_file(resumed.out_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Stop):
        train(tiny_train_config(learnable_folder, tmp_path / "again", **kw), notify=stop_after(1))
    shutil.copy(whole.out_dir / "model.safetensors", mine / "model.safetensors")  # the teacher retrained
    with pytest.raises(MuraError, match="teacher's weights changed"):
        train(tiny_train_config(learnable_folder, tmp_path / "again", resume=True, **kw))


def _source(name, trained_on, named="abcd"):
    """A teacher whose split names the images ``named``, trained on ``trained_on`` (None: no split)."""
    sides = None if trained_on is None else {p: "train" if p in trained_on else "holdout" for p in named}
    return distill.TeacherSource(Path(name), sides)


def test_each_image_goes_to_the_teachers_that_never_trained_on_it():
    paths = ["a", "b", "c", "d"]
    folds = [_source("t0", {"c", "d"}), _source("t1", {"a", "b"}), _source("t2", {"a", "c"})]
    assigned, held_out = distill.assign_teachers(folds, paths)
    # a: only t0 held it out; b: t0 and t2; c: t1; d: t1 and t2
    assert assigned.tolist() == [
        [True, True, False, False],
        [False, False, True, True],
        [False, True, False, True],
    ]
    assert held_out.all()
    # an image every teacher trained on, or a teacher without a split, is scored by all (in sample)
    assigned, held_out = distill.assign_teachers([_source("t0", {"a"}), _source("t1", None)], ["a"])
    assert assigned.tolist() == [[True], [True]] and held_out.tolist() == [False]
    # an image the teacher's split does not name is not taken for held out (an older split.csv)
    assigned, held_out = distill.assign_teachers([_source("t0", {"a"}, named="a")], ["a", "b"])
    assert assigned.tolist() == [[True, True]] and held_out.tolist() == [False, False]


def _fold_file(split: pd.DataFrame, held: set, path: Path) -> Path:
    sides = [("holdout" if p in held else side) for p, side in zip(split["rel_path"], split["side"])]
    split[["rel_path"]].assign(side=sides).to_csv(path, index=False)
    return path


def _scores(model_dir: Path, folder: Path, out: Path) -> pd.Series:
    config = ScoreConfig(
        input=str(folder), out_dir=str(out), model=str(model_dir), workers=0, precision="fp32"
    )
    return score_folder(config).images.set_index("path")["probability"]


def test_teachers_on_folds_score_only_the_images_they_never_saw(learnable_folder, tmp_path):
    folds = [
        train(tiny_train_config(learnable_folder, tmp_path / f"t{k}", epochs=2, holdout_fold=f"{k}/2"))
        for k in range(2)
    ]
    splits = [pd.read_csv(f.out_dir / "split.csv") for f in folds]
    val = [set(split.loc[split["side"] == "val", "rel_path"]) for split in splits]
    fitted = [set(split.loc[split["side"] == "train", "rel_path"]) for split in splits]
    held = [set(split.loc[split["side"] == "holdout", "rel_path"]) for split in splits]
    assert val[0] == val[1]  # the same validation images, the seeded split's
    assert held == [fitted[1], fitted[0]]  # two folds: each training image left out of one teacher
    train_paths = fitted[0] | fitted[1]
    student = train(
        tiny_train_config(
            learnable_folder,
            tmp_path / "student",
            epochs=1,
            distill_from=tuple(str(f.out_dir) for f in folds),
        )
    )
    taught = pd.read_csv(student.out_dir / distill.TEACHER_FILE).set_index("path")
    assert set(taught.index) == train_paths and taught["out_of_fold"].all()
    scored = [_scores(f.out_dir, learnable_folder, tmp_path / f"s{k}") for k, f in enumerate(folds)]
    for k in range(2):  # each image's probability is that of the teacher that never saw it
        mine = sorted(held[k])
        given = taught.loc[mine, "teacher_probability"]
        assert np.abs(given - scored[k].loc[mine]).max() < 1e-4  # batch-composition noise only
        assert np.abs(given - scored[1 - k].loc[mine]).max() > 0.01  # not the other teacher's
    source = json.loads((student.out_dir / "config.json").read_text())["provenance"]["distilled_from"]
    assert source["images_out_of_fold"] == len(train_paths) and source["images_in_sample"] == 0
    assert [t["images_scored"] for t in source["teachers"]] == [len(h) for h in held]
    # a fold teacher's split.csv names its holdout images, so it serves as a --split file as it is
    again = train(
        tiny_train_config(
            learnable_folder, tmp_path / "again", epochs=1, split_file=str(folds[0].out_dir / "split.csv")
        )
    )
    assert pd.read_csv(again.out_dir / "split.csv").equals(splits[0])


def test_a_holdout_fold_is_k_of_n():
    from mura_cli.config import TrainConfig

    for bad in ("3/3", "1", "a/b", "0/1", "-1/3"):
        with pytest.raises(ValueError, match="holdout_fold"):
            TrainConfig(data="d", out_dir="o", holdout_fold=bad)
    assert TrainConfig(data="d", out_dir="o", holdout_fold="2/3").holdout_fold == "2/3"


def test_a_split_file_that_does_not_fit_the_data_is_refused(learnable_folder, tmp_path):
    from mura_cli.errors import InputError

    seeded = train(tiny_train_config(learnable_folder, tmp_path / "seeded", epochs=1))
    split = pd.read_csv(seeded.out_dir / "split.csv")
    cases = {
        "short": (split.iloc[1:], r"no side for 1 of the training images, e\.g\. " + split["rel_path"][0]),
        "extra": (
            pd.concat([split, split.iloc[:1].assign(rel_path="x/nowhere.png")]),
            "names 1 images outside the training pool",
        ),
        "side": (split.assign(side=split["side"].replace("val", "valid")), "side 'valid' is not one of"),
        "columns": (split.rename(columns={"side": "part"}), "needs the columns rel_path,side"),
    }
    patient = split["patient_id"][split["patient_id"].duplicated()].iloc[0]
    rows = split.index[split["patient_id"] == patient]
    mixed = split.copy()
    mixed.loc[rows, "side"] = ["train", "val"] + ["train"] * (len(rows) - 2)
    cases["patient"] = (mixed, f"patient {patient} has images on both the train and val side")
    for name, (table, message) in cases.items():
        table[[c for c in table.columns if c in ("rel_path", "side", "part")]].to_csv(
            tmp_path / f"{name}.csv", index=False
        )
        with pytest.raises(InputError, match=message):
            train(
                tiny_train_config(learnable_folder, tmp_path / name, split_file=str(tmp_path / f"{name}.csv"))
            )
        assert not (tmp_path / name).exists()
    held = set(split.loc[split["side"] == "train", "rel_path"][:3])
    _fold_file(split, held, tmp_path / "fold.csv")
    fold = train(
        tiny_train_config(
            learnable_folder, tmp_path / "fold", epochs=1, split_file=str(tmp_path / "fold.csv")
        )
    )
    written = pd.read_csv(fold.out_dir / "split.csv")
    assert set(written.loc[written["side"] == "holdout", "rel_path"]) == held  # left out, and said so
    assert (
        set(written.loc[written["side"] == "train", "rel_path"])
        == set(split.loc[split["side"] == "train", "rel_path"]) - held
    )
    # a run on another run's split.csv trains and validates on the same images
    again = train(
        tiny_train_config(
            learnable_folder,
            tmp_path / "again",
            epochs=1,
            split_file=str(seeded.out_dir / "split.csv"),
            val_fraction=0.5,
        )
    )
    assert pd.read_csv(again.out_dir / "split.csv").equals(split)


def test_a_checkpoint_of_one_teacher_still_names_its_weights():
    assert distill.teacher_shas({"weights_sha256": "abc", "model": "t"}) == ["abc"]  # before folds
    assert distill.teacher_shas({"teachers": [{"weights_sha256": "a"}, {"weights_sha256": "b"}]}) == [
        "a",
        "b",
    ]
    assert distill.teacher_shas(None) == []


def test_recipe_values_that_became_lists_compare_as_the_same():
    from mura_cli.training.checkpoints import _same

    assert _same(None, []) and _same(None, ()) and _same("t1", ["t1"]) and _same(["a", "b"], ("a", "b"))
    assert not _same("t1", ["t2"]) and not _same(None, ["t1"]) and not _same(["a", "b"], ["b", "a"])
    assert _same(0.5, 0.5) and not _same(0.5, 0.25)


def test_resume_with_a_split_file_ignores_the_unused_validation_fraction(tmp_path):
    from mura_cli.training.checkpoints import check_same_recipe

    with_file = tiny_train_config(tmp_path, tmp_path / "m", split_file="split.csv", val_fraction=0.25)
    recipe = {**with_file.to_dict(), "val_fraction": 0.15}  # the checkpoint's run: same file, other fraction
    check_same_recipe(recipe, with_file, tmp_path / "m")  # no error: the fraction was not used
    without_file = tiny_train_config(tmp_path, tmp_path / "m", val_fraction=0.25)
    with pytest.raises(MuraError, match="val_fraction"):
        check_same_recipe({**without_file.to_dict(), "val_fraction": 0.15}, without_file, tmp_path / "m")
    with pytest.raises(MuraError, match="split_file"):
        check_same_recipe({**recipe, "split_file": "other.csv"}, with_file, tmp_path / "m")
