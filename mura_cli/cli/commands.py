"""The `mura-cli` command line: parses options, calls the library, draws progress and summaries."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mura_cli import __version__, choices, environment
from mura_cli.choices import ExitCode
from mura_cli.cli.options import build, opt
from mura_cli.config import (
    CalibrateConfig,
    EvalConfig,
    MergeConfig,
    PrecisionCheckConfig,
    ScoreConfig,
    TrainConfig,
)
from mura_cli.environment import MODELS_DIR_ENV
from mura_cli.errors import MuraError, OutputError
from mura_cli.wording import counted

app = typer.Typer(
    rich_markup_mode=None,  # plain click help: one flag column, readable at 80 columns
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Abnormality scoring of musculoskeletal radiographs (MURA task). " + choices.RESEARCH_NOTICE,
)
err = Console(stderr=True, highlight=False)
MAX_FAILURE_LINES = 20


def _names(text: str | None) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b')."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def _fail(message: str, code: ExitCode = ExitCode.FATAL) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(int(code))


def _fail_from(exc: MuraError) -> typer.Exit:
    """The library's error as one line; results that could not be written exit 4, the rest 1."""
    return _fail(str(exc), ExitCode.OUTPUT if isinstance(exc, OutputError) else ExitCode.FATAL)


class _ProgressView:
    """Draws the library's Progress events as a rich bar with images/s and ETA on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task = None

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if event.stage == "notice":
            err.print(f"[yellow]notice:[/] {escape(event.message)}", soft_wrap=True)
        elif event.stage == "start":
            err.print(escape(event.message), soft_wrap=True)
            self.bar = Progress(
                TextColumn("images"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.task = self.bar.add_task("images", total=event.total, rate="")
            self.bar.start()
        elif event.stage == "images" and self.bar is not None:
            speed = self.bar.tasks[0].speed
            self.bar.update(self.task, completed=event.done, rate=f"{speed:.1f} img/s" if speed else "")
        elif event.stage in ("report", "metrics"):
            self.stop()
            if event.message:
                err.print(escape(event.message), soft_wrap=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _summary(result) -> None:
    counts, seconds, model = result.run.counts, result.run.seconds, result.run.model.config
    table = Table(title="mura-cli score", show_header=False, title_justify="left")
    table.add_row("images scored", f"{counts.scored} of {counts.images}")
    table.add_row("failed", str(counts.failed))
    table.add_row(
        "studies",
        f"{counts.studies}: {counts.positive_studies} predicted "
        f"{model['positive_class']}, {counts.negative_studies} {model['negative_class']}",
    )
    table.add_row("other files skipped", str(counts.skipped_files))
    table.add_row(
        "time", f"{seconds['total']:.1f} s ({seconds['images_per_second']:.1f} img/s in the model pass)"
    )
    for name, path in result.files.items():
        table.add_row(name, str(path))
    err.print(table)
    for path, reason in result.failures[:MAX_FAILURE_LINES]:
        err.print(f"[yellow]failed:[/] {escape(path)}: {escape(reason)}", soft_wrap=True)
    if len(result.failures) > MAX_FAILURE_LINES:
        err.print(f"... and {len(result.failures) - MAX_FAILURE_LINES} more failures (see images.csv)")
    if result.report_error:
        err.print(f"[yellow]{escape(result.report_error)}[/]", soft_wrap=True)


@app.command()
def score(
    input: Path = typer.Argument(
        ..., metavar="INPUT", help="Folder of studies (PNG, JPEG, DICOM), or one image file."
    ),
    out: Path = opt(ScoreConfig, "out_dir"),
    model: str | None = opt(ScoreConfig, "model"),
    pdf: bool = opt(ScoreConfig, "pdf"),
    html: bool = opt(ScoreConfig, "html"),
    device: str = opt(ScoreConfig, "device"),
    precision: choices.Precision = opt(ScoreConfig, "precision"),
    batch_size: int = opt(ScoreConfig, "batch_size"),
    workers: int | None = opt(ScoreConfig, "workers"),
    aggregate: choices.Aggregation | None = opt(ScoreConfig, "aggregate"),
    threshold: float | None = opt(ScoreConfig, "threshold"),
    heatmaps: bool = opt(ScoreConfig, "heatmaps"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
    resume: bool = typer.Option(
        False, "--resume", help="Finish an interrupted run in --out: skip the images it scored."
    ),
    include_phi: bool = opt(ScoreConfig, "include_phi"),
    shard: str | None = opt(ScoreConfig, "shard"),
    tta: choices.TTA | None = opt(ScoreConfig, "tta"),
    engine: choices.Engine = opt(ScoreConfig, "engine"),
    allow_modality: list[str] = opt(ScoreConfig, "allow_modality"),
    group_by: choices.GroupBy = opt(ScoreConfig, "group_by"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Score every radiograph below INPUT; write images.csv, studies.csv, run.json (and report.pdf)."""
    config = build(ScoreConfig, locals(), input=input, out_dir=out)
    if overwrite and resume:
        raise typer.BadParameter("choose one of --overwrite and --resume", param_hint="--resume")
    if include_phi:
        err.print(
            "[yellow]warning:[/] --include-phi puts DICOM PatientID into the patient_id column of "
            "studies.csv; do not share that file outside your institution"
        )
    from mura_cli.scoring.score import score_folder

    view = _ProgressView(quiet)
    try:
        result = score_folder(config, notify=view, overwrite=overwrite, resume=resume)
    except MuraError as exc:
        raise _fail_from(exc) from None
    except KeyboardInterrupt:
        view.stop()
        err.print(
            f"interrupted: the images finished so far are in {escape(str(out / 'images.csv'))}; "
            "finish the run with the same command plus --resume",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    finally:
        view.stop()
    if not quiet:
        _summary(result)
    elif result.failures:
        for path, reason in result.failures:
            err.print(f"failed: {path}: {reason}", soft_wrap=True, markup=False)
    if result.exit_code == ExitCode.FATAL:
        raise _fail("no image could be scored (see images.csv for the reasons)")
    raise typer.Exit(int(result.exit_code))


class _TrainView:
    """Per-epoch progress bar and a growing table of epoch metrics, on stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.task = quiet, None, None

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if event.stage == "start":
            err.print(escape(event.message), soft_wrap=True)
        elif event.stage == "batch":
            if self.bar is None:
                self.bar = Progress(
                    TextColumn(f"epoch {event.epoch + 1}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    transient=True,
                )
                self.task = self.bar.add_task("train", total=event.total)
                self.bar.start()
            self.bar.update(self.task, completed=event.done)
        elif event.stage == "epoch":
            self.stop()
            r = event.row
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            err.print(
                f"epoch {r['epoch']:>3} [{r['phase']}]  train loss {r['train_loss']:.4f}  "
                f"val loss {r['val_loss']:.4f}  val AUROC {fmt(r['val_auroc'])}  "
                f"kappa {fmt(r['val_kappa'])}  "
                + (
                    f"deletion {fmt(r['val_deletion_drop'])} (elsewhere {fmt(r['val_elsewhere_drop'])})  "
                    if r.get("val_deletion_drop") is not None
                    else ""
                )
                + f"lr {r['lr']:.2e}  {r['seconds']:.0f} s",
                markup=False,
                soft_wrap=True,
            )

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _epoch_table(log) -> None:
    table = Table(title="epochs (validation at study level)", title_justify="left")
    deletion = "val_deletion_drop" in log and log["val_deletion_drop"].notna().any()
    columns = ["epoch", "phase", "train loss", "val loss", "val AUROC", "val kappa"]
    columns += ["val deletion", "elsewhere"] if deletion else []
    for column in (*columns, "lr", "s"):
        table.add_column(column, justify="right")
    for r in log.to_dict("records"):
        fmt = lambda v: "-" if v is None or v != v else f"{v:.4f}"  # noqa: E731
        cells = [str(r["epoch"]), r["phase"], *(fmt(r[k]) for k in ("train_loss", "val_loss", "val_auroc"))]
        cells.append(fmt(r["val_kappa"]))
        cells += [fmt(r["val_deletion_drop"]), fmt(r["val_elsewhere_drop"])] if deletion else []
        table.add_row(*cells, f"{r['lr']:.1e}", f"{r['seconds']:.0f}")
    err.print(table)


@app.command()
def train(
    data: Path = typer.Argument(
        ..., metavar="DATA", help="MURA-v1.1 root, FracAtlas folder, manifest CSV, or MURA-layout folder."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        metavar="FOLDER",
        help="Model folder to write (config.json, model.safetensors, ...).",
    ),
    arch: str = opt(TrainConfig, "arch"),
    img_size: int = opt(TrainConfig, "img_size"),
    in_chans: int = opt(TrainConfig, "in_chans"),
    epochs: int = opt(TrainConfig, "epochs"),
    batch_size: int = opt(TrainConfig, "batch_size"),
    lr: float = opt(TrainConfig, "lr"),
    head_lr: float = opt(TrainConfig, "head_lr"),
    weight_decay: float = opt(TrainConfig, "weight_decay"),
    freeze_epochs: int = opt(TrainConfig, "freeze_epochs"),
    ema_decay: float = opt(TrainConfig, "ema_decay"),
    scheduler: choices.Scheduler = opt(TrainConfig, "scheduler"),
    patience: int = opt(TrainConfig, "patience"),
    monitor: choices.Monitor = opt(TrainConfig, "monitor"),
    class_weights: choices.ClassWeights = opt(TrainConfig, "class_weights"),
    val_fraction: float = opt(TrainConfig, "val_fraction"),
    split_file: Path | None = opt(TrainConfig, "split_file"),
    holdout_fold: str | None = opt(TrainConfig, "holdout_fold"),
    seed: int = opt(TrainConfig, "seed"),
    device: str = opt(TrainConfig, "device"),
    precision: choices.Precision = opt(TrainConfig, "precision"),
    workers: int | None = opt(TrainConfig, "workers"),
    pretrained: bool = opt(TrainConfig, "pretrained"),
    init_weights: str | None = opt(TrainConfig, "init_weights"),
    output_stride: int = opt(TrainConfig, "output_stride"),
    pooling: choices.Pooling = opt(TrainConfig, "pooling"),
    pooling_sharpness: float = opt(TrainConfig, "pooling_sharpness"),
    boxes: Path | None = opt(TrainConfig, "boxes"),
    box_loss_weight: float = opt(TrainConfig, "box_loss_weight"),
    box_grow: float = opt(TrainConfig, "box_grow"),
    box_loss_from: int = opt(TrainConfig, "box_loss_from"),
    lesion_erase: float = opt(TrainConfig, "lesion_erase"),
    deletion_loss_weight: float = opt(TrainConfig, "deletion_loss_weight"),
    deletion_loss_from: int = opt(TrainConfig, "deletion_loss_from"),
    distill_from: list[str] = opt(TrainConfig, "distill_from"),
    distill_weight: float = opt(TrainConfig, "distill_weight"),
    tta: choices.TTA = opt(TrainConfig, "tta"),
    flip: bool = opt(TrainConfig, "flip"),
    rotate: float = opt(TrainConfig, "rotate"),
    brightness: float = opt(TrainConfig, "brightness"),
    contrast: float = opt(TrainConfig, "contrast"),
    scale: float = opt(TrainConfig, "scale"),
    resume: bool = opt(TrainConfig, "resume"),
    resume_changes: str | None = opt(TrainConfig, "resume_changes", default=None),
    deterministic: bool | None = opt(TrainConfig, "deterministic"),
    cache: bool = opt(TrainConfig, "cache"),
    name: str = opt(TrainConfig, "name"),
    positive_class: str = opt(TrainConfig, "positive_class"),
    negative_class: str = opt(TrainConfig, "negative_class"),
    task: str = opt(TrainConfig, "task"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fine-tune a timm model; write a model folder that `score` and `evaluate` take."""
    config = build(TrainConfig, locals(), data=data, out_dir=out, resume_changes=_names(resume_changes))
    from mura_cli.training.train import train as run_training

    quiet = quiet or environment.current().rank != 0  # under torchrun only rank 0 talks
    view = _TrainView(quiet)
    try:
        result = run_training(config, notify=view)
    except MuraError as exc:
        raise _fail_from(exc) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; continue with the same command plus --resume (state in {out})") from None
    finally:
        view.stop()
    if not quiet:
        _epoch_table(result.log)
        v = result.val_metrics
        chosen = (
            f"epoch {result.best_epoch} kept ({result.note})"
            if result.note
            else f"best epoch {result.best_epoch}"
        )
        err.print(
            f"{chosen}: validation study AUROC {_figure(v.get('auroc'))}, kappa {_figure(v.get('kappa'))} "
            f"at threshold {result.threshold:.4f}; model written to {result.out_dir}",
            markup=False,
            soft_wrap=True,
        )


def _figure(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@app.command()
def evaluate(
    data: Path = typer.Argument(
        ..., metavar="DATA", help="MURA-v1.1 root, FracAtlas folder, manifest CSV, or MURA-layout folder."
    ),
    model: str | None = opt(EvalConfig, "model"),
    out: Path = opt(EvalConfig, "out_dir"),
    split: str | None = opt(EvalConfig, "split"),
    boxes: Path | None = opt(EvalConfig, "boxes"),
    pointing_tolerance: float = opt(EvalConfig, "pointing_tolerance"),
    deletion: bool = opt(EvalConfig, "deletion"),
    tta: choices.TTA | None = opt(EvalConfig, "tta"),
    engine: choices.Engine = opt(EvalConfig, "engine"),
    allow_modality: list[str] = opt(EvalConfig, "allow_modality"),
    pdf: bool = opt(EvalConfig, "pdf"),
    html: bool = opt(EvalConfig, "html"),
    gallery: int = opt(EvalConfig, "gallery"),
    bootstrap: int = opt(EvalConfig, "bootstrap"),
    target_sensitivity: float = opt(EvalConfig, "target_sensitivity"),
    seed: int = opt(EvalConfig, "seed"),
    device: str = opt(EvalConfig, "device"),
    precision: choices.Precision = opt(EvalConfig, "precision"),
    batch_size: int = opt(EvalConfig, "batch_size"),
    workers: int | None = opt(EvalConfig, "workers"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Judge a model: AUROC, kappa, sensitivity, specificity (with 95% CIs) per body part, and more."""
    config = build(EvalConfig, locals(), data=data, out_dir=out)
    from mura_cli.evaluation.evaluate import evaluate as run_evaluation

    view = _ProgressView(quiet)
    try:
        result = run_evaluation(config, notify=view, overwrite=overwrite)
    except MuraError as exc:
        raise _fail_from(exc) from None
    finally:
        view.stop()
    if not quiet:
        _eval_summary(result)


def _eval_summary(result) -> None:
    run = result.metrics["run"]
    images = len(result.images)
    table = Table(
        title=f"study level, split '{run['split']}': {images} image{'s' * (images != 1)}, "
        f"{counted(len(result.studies), 'study')} (95% CI)",
        title_justify="left",
    )
    for column in ("group", "n (pos.)", "AUROC", "kappa", "sensitivity", "specificity"):
        table.add_column(column)
    study = result.metrics["study"]
    for name, v in [("overall", study["overall"]), *study["per_body_part"].items()]:
        cells = []
        for metric in ("auroc", "kappa", "sensitivity", "specificity"):
            value, ci = v[metric]["value"], v[metric]["ci"]
            cells.append(
                "-" if value is None else f"{value:.3f}" + (f"\n[{ci[0]:.3f}-{ci[1]:.3f}]" if ci else "")
            )
        table.add_row(name, f"{v['n']} ({v['n_positive']})", *cells)
    err.print(table)
    loc = result.metrics.get("localisation")
    if loc:
        o = loc["overall"]
        err.print(
            f"heatmaps ({o['n']} positive images with boxes): pointing strict {o['pointing_game']:.3f} "
            f"(centre baseline {o['centre_baseline']:.3f}), tolerant {o['pointing_game_tolerant']:.3f} "
            f"(centre {o['centre_baseline_tolerant']:.3f})",
            markup=False,
            soft_wrap=True,
        )
        d = loc.get("deletion") or {}
        if d.get("boxes_filled", {}).get("n"):
            other = d["elsewhere_filled"]["mean"]
            err.print(
                f"deletion test: filling the boxes lowers the probability by {d['boxes_filled']['mean']:.3f}, "
                f"filling regions elsewhere by {'-' if other is None else f'{other:.3f}'}",
                markup=False,
                soft_wrap=True,
            )
    err.print(f"results in {result.out_dir}", markup=False, soft_wrap=True)


@app.command()
def calibrate(
    model: Path = typer.Argument(..., metavar="MODEL", help="Model folder whose config.json is refitted."),
    data: Path = typer.Argument(
        ..., metavar="DATA", help="Labelled data: the model's validation images (never its test split)."
    ),
    split: str | None = opt(CalibrateConfig, "split"),
    tta: choices.TTA | None = opt(CalibrateConfig, "tta"),
    device: str = opt(CalibrateConfig, "device"),
    engine: choices.Engine = opt(CalibrateConfig, "engine"),
    batch_size: int = opt(CalibrateConfig, "batch_size"),
    workers: int | None = opt(CalibrateConfig, "workers"),
) -> None:
    """Fit a model's temperature, bias and threshold again on labelled data (optionally for --tta flip)."""
    config = build(CalibrateConfig, locals(), model=model, data=data)
    from mura_cli.evaluation.calibrate import calibrate_model

    try:
        result = calibrate_model(config)
    except MuraError as exc:
        raise _fail_from(exc) from None
    b, a = result.before, result.after
    err.print(
        f"calibrated {escape(result.model_dir)} on {counted(result.images, 'image')} of split "
        f"'{result.split}' (tta {result.tta}): temperature {b['temperature']:.4f} -> {a['temperature']:.4f}, "
        f"bias {b['logit_bias']:.4f} -> {a['logit_bias']:.4f}, threshold {b['threshold']:.4f} -> "
        f"{a['threshold']:.4f}, study ECE {b['study_ece']:.4f} -> {a['study_ece']:.4f}",
        soft_wrap=True,
    )


@app.command("check-precision")
def check_precision(
    images: Path = typer.Argument(
        ..., metavar="IMAGES", help="Folder of radiographs (or one image) to score in each precision."
    ),
    model: str | None = opt(PrecisionCheckConfig, "model"),
    device: str = opt(PrecisionCheckConfig, "device"),
    precisions: list[choices.ReducedPrecision] = opt(PrecisionCheckConfig, "precisions"),
    batch_size: int = opt(PrecisionCheckConfig, "batch_size"),
    record: bool = opt(PrecisionCheckConfig, "record"),
) -> None:
    """Score the same images in fp32 and in reduced precision; report how far the answers move."""
    config = build(PrecisionCheckConfig, locals(), images=images)
    from mura_cli.inference.precision_check import run_precision_check

    try:
        checked = run_precision_check(config)
    except MuraError as exc:
        raise _fail_from(exc) from None
    _precision_table(checked.model.config.name, checked.device, checked.results)
    if checked.recorded_in:
        err.print(f"recorded in {escape(str(checked.recorded_in))}", soft_wrap=True)


def _precision_table(name: str, device, results: dict) -> None:
    from mura_cli.inference.precision_check import BOUNDS as bounds

    table = Table(
        title=f"{name} on {device}: difference from fp32",
        title_justify="left",
        caption=f"a rounding: p99 <= {bounds['p99']}, max <= {bounds['max']}, flips <= "
        f"{bounds['flip_share']:.1%}, same heatmap peak cell >= {bounds['same_peak_cell']:.0%}",
        caption_justify="left",
    )
    for column in ("", "images", "median", "p99", "max", "flips", "same cell", ">10 px", "verdict"):
        table.add_column(column, no_wrap=True)
    for precision, r in results.items():
        table.add_row(
            precision,
            str(r["images"]),
            f"{r['median']:.4f}",
            f"{r['p99']:.4f}",
            f"{r['max']:.4f}",
            f"{r['flips']} ({r['flip_share']:.1%})",
            f"{r['same_peak_cell']:.0%}",
            str(r["peaks_moved_over_10px"]),
            "rounding" if r["passed"] else "CHANGED",
        )
    Console().print(table)


@app.command()
def merge(
    shards: list[Path] = typer.Argument(
        ..., metavar="SHARD...", help="Results folders of `score --shard I/N`, one per shard."
    ),
    out: Path = typer.Option(..., "--out", "-o", metavar="FOLDER", help="Where the merged results go."),
    pdf: bool = opt(MergeConfig, "pdf"),
    overwrite: bool = opt(MergeConfig, "overwrite"),
) -> None:
    """Combine shard results into exactly what a single run would have written."""
    config = build(MergeConfig, locals(), shards=shards, out_dir=out)
    from mura_cli.scoring.merge import merge_shards

    try:
        run = merge_shards(config)
    except MuraError as exc:
        raise _fail_from(exc) from None
    counts = run.counts
    err.print(
        f"merged {counted(run.shards, 'shard')}: {counted(counts.images, 'image')} ({counts.failed} failed), "
        f"{counted(counts.studies, 'study')} -> {escape(str(out))}",
        soft_wrap=True,
    )
    raise typer.Exit(int(ExitCode.PARTIAL if counts.failed else ExitCode.OK))


@app.command()
def models() -> None:
    """List the models `--model NAME` can name: user models ($MURA_CLI_MODELS) and shipped ones."""
    from mura_cli.model.catalog import list_models

    entries = list_models()
    if not entries:
        err.print(f"no models found (shipped models, or folders under ${MODELS_DIR_ENV})")
        raise typer.Exit(int(ExitCode.OK))
    table = Table(title="models", title_justify="left")
    for column in ("name", "source", "architecture", "input", "held-out study AUROC [95% CI]", "sens / spec"):
        table.add_column(column, overflow="fold")
    for e in entries:
        head = e.headline()
        auroc = head.get("auroc", {})
        auroc_text = (
            f"{auroc['value']:.3f} [{auroc['ci'][0]:.3f}-{auroc['ci'][1]:.3f}]" if auroc.get("ci") else "-"
        )
        sens, spec = head.get("sensitivity", {}).get("value"), head.get("specificity", {}).get("value")
        ops = f"{sens:.3f} / {spec:.3f}" if sens is not None and spec is not None else "-"
        cfg = e.config
        table.add_row(
            e.name + (" (default)" if e.is_default else ""),
            e.source,
            cfg.architecture if cfg else f"[red]{escape(e.problem)}[/]",
            f"{cfg.input_size[1]}x{cfg.input_size[2]}" if cfg else "",
            auroc_text,
            ops,
        )
    Console(highlight=False).print(table)
    for e in entries:
        if e.config:
            typer.echo(f"{e.name}: {e.config.task} ({e.path})")


@app.command("sample-data")
def sample_data(
    folder: Path = typer.Argument(
        Path("samples"), metavar="FOLDER", help="Where to write the sample studies."
    ),
) -> None:
    """Write real sample radiographs (an extremity CR from pydicom-data, MIT) to FOLDER."""
    from mura_cli.inputs.samples import write_samples

    try:
        paths = write_samples(folder)
    except MuraError as exc:
        raise _fail_from(exc) from None
    for path in paths:
        typer.echo(str(path))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"mura-cli {__version__}")


# glibc malloc settings that stop the allocator from returning memory to the OS after every batch:
# page faults took 38-55% of CPU inference time without them (issue 7's measurements); they must be in
# the environment before the interpreter starts, so the heavy commands re-execute themselves once.
MALLOC_TUNABLES = (
    "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184"
)
HEAVY_COMMANDS = {"score", "train", "evaluate"}
TUNING_ENV = "MURA_CLI_MALLOC_TUNING"  # set to 0 to keep the system allocator's defaults


# `python -m` puts the working directory first on the import path, so a rich.py or mura_cli/ in the folder
# the user runs from would be imported: -P (Python 3.11+) leaves it out; on 3.10 the launcher drops it.
_LAUNCH_310 = (
    "import runpy, sys; del sys.path[0]; sys.argv[0] = 'mura-cli'; "
    "runpy.run_module('mura_cli', run_name='__main__', alter_sys=True)"
)


def _safe_module_launch() -> list[str]:
    return ["-P", "-m", "mura_cli"] if sys.version_info >= (3, 11) else ["-c", _LAUNCH_310]


def _reexec_with_malloc_tuning(argv: list[str]) -> None:
    if (
        not sys.platform.startswith("linux")
        or os.environ.get(TUNING_ENV, "1") == "0"
        or "GLIBC_TUNABLES" in os.environ
        or not HEAVY_COMMANDS.intersection(argv[1:2])
    ):
        return
    env = {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES, TUNING_ENV: "0"}
    try:
        os.execve(sys.executable, [sys.executable, *_safe_module_launch(), *argv[1:]], env)
    except OSError:  # cannot re-execute (unusual launcher): run untuned rather than fail
        return


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # batch schedulers send SIGTERM: stop as for Ctrl-C (results kept, resumable)


def main() -> None:
    import logging
    import signal

    _reexec_with_malloc_tuning(sys.argv)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its warnings about odd files would flood stderr
    try:
        app(prog_name="mura-cli")
    except SystemExit as exc:  # keep typer's exit code (2 for usage errors)
        sys.exit(exc.code)
