"""Engines: OpenVINO and ONNX Runtime give torch's probabilities and peaks, their exports are cached
whole and rebuilt when broken, and any failure falls back to torch with one line."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

import mura_cli
from mura_cli.environment import ENGINE_CACHE_ENV
from mura_cli.inference import engines
from mura_cli.inference.device import create_runtime
from mura_cli.inference.predictor import Predictor

from conftest import radiograph

ENGINES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not engines.can_export(name), reason=f"{engines.LABELS[name]} or its exporter is not installed"
        ),
    )
    for name in engines.EXPORTED
]
needs_openvino = pytest.mark.skipif(not engines.installed("openvino"), reason="OpenVINO is not installed")


def _scores(model, engine, cache):
    images = [radiograph(k, height=80 + 9 * k, width=64 + 5 * k) for k in range(8)]
    return mura_cli.score_images(
        images, model, engine=engine, device="cpu", precision="fp32", batch_size=3, engine_cache=cache
    ).images


def _cell(row, model, stride: int = 32) -> tuple[int, int]:
    """The feature cell (row, column) that an images.csv peak lies in, on the model's canvas."""
    from mura_cli.inputs.geometry import fit_geometry

    _, height, width = model.config.input_size
    g = fit_geometry(int(row["height"]), int(row["width"]), height, width, model.config.resize)
    y = g.top + (row["heatmap_peak_y"] + 0.5) * g.new_h / g.orig_h
    x = g.left + (row["heatmap_peak_x"] + 0.5) * g.new_w / g.orig_w
    return int(y // stride), int(x // stride)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fixture", ["tiny_model", "resnet_model"])
def test_engines_give_torchs_probabilities_and_peaks(engine, fixture, request, tmp_path):
    model = mura_cli.load_model(request.getfixturevalue(fixture))
    torch_rows, rows = _scores(model, "torch", tmp_path), _scores(model, engine, tmp_path)
    np.testing.assert_allclose(rows["probability"], torch_rows["probability"], atol=1e-4)
    assert rows["heatmap_peak_x"].notna().all() and torch_rows["heatmap_peak_x"].notna().all()
    # the peak is in the same feature cell everywhere; on the tiny model's 2 x 2 map two cells can be
    # near ties, and the upsampled map's maximum pixel moves inside the cell with 1e-6 differences
    assert [_cell(row, model) for _, row in rows.iterrows()] == [
        _cell(row, model) for _, row in torch_rows.iterrows()
    ]
    exact = (rows["heatmap_peak_x"] == torch_rows["heatmap_peak_x"]) & (
        rows["heatmap_peak_y"] == torch_rows["heatmap_peak_y"]
    )
    assert exact.mean() >= (1.0 if fixture == "resnet_model" else 0.5)
    predictor = Predictor(model, create_runtime("cpu", "fp32"), engine=engine, engine_cache=tmp_path)
    info = predictor.engine
    assert info.name == engine and info.export_sha256 and info.probe_max_difference <= engines.PROBE_TOLERANCE


@pytest.mark.parametrize("engine", ENGINES)
def test_the_export_is_cached_and_a_broken_entry_is_rebuilt(engine, tiny_model, tmp_path, monkeypatch):
    model = mura_cli.load_model(tiny_model)
    runtime = create_runtime("cpu", "fp32")
    first = Predictor(model, runtime, engine=engine, engine_cache=tmp_path).engine
    [entry] = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert {p.name for p in entry.iterdir()} == {*engines.FILES[engine], "meta.json"}
    calls = []
    real = engines.export
    monkeypatch.setattr(engines, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = Predictor(model, runtime, engine=engine, engine_cache=tmp_path).engine
    assert calls == [] and again.export_sha256 == first.export_sha256  # read from the cache
    bare = Predictor(model, runtime, heatmaps=False, engine=engine, engine_cache=tmp_path).engine
    assert calls == [] and bare.export_sha256 == first.export_sha256  # an entry checked with peaks serves
    (entry / engines.FILES[engine][-1]).write_bytes(b"damaged")
    rebuilt = Predictor(model, runtime, engine=engine, engine_cache=tmp_path).engine
    assert calls == [1] and rebuilt.name == engine  # exported again (an export need not be byte-identical)
    assert engines.cached_export(entry, engine)["export_sha256"] == rebuilt.export_sha256
    assert json.loads((entry / "meta.json").read_text())["probe_passed"] is True


@pytest.mark.parametrize("engine", ENGINES)
def test_an_export_checked_without_heatmaps_never_serves_a_run_with_them(
    engine, tiny_model, tmp_path, monkeypatch
):
    """A run without the CAM compares no peaks in its probe check: its export is kept apart, and the
    first run with heatmaps makes (and checks) its own."""
    model = mura_cli.load_model(tiny_model)
    runtime = create_runtime("cpu", "fp32")
    bare = Predictor(model, runtime, heatmaps=False, engine=engine, engine_cache=tmp_path).engine
    calls = []
    real = engines.export
    monkeypatch.setattr(engines, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert Predictor(
        model, runtime, heatmaps=False, engine=engine, engine_cache=tmp_path
    ).engine.export_sha256 == (bare.export_sha256)
    assert calls == []  # the bare entry serves bare runs
    with_maps = Predictor(model, runtime, engine=engine, engine_cache=tmp_path).engine
    assert calls == [1] and with_maps.name == engine  # its own export, its peaks checked
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2


@needs_openvino
def test_a_failed_export_falls_back_to_torch_with_a_reason_and_still_scores(
    tiny_model, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("conversion\nexploded")

    monkeypatch.setattr(engines, "export", broken)
    monkeypatch.setenv(ENGINE_CACHE_ENV, str(tmp_path / "fresh-cache"))  # no export of earlier tests
    from mura_cli.config import ScoreConfig

    (tmp_path / "in").mkdir()
    from conftest import save_png8

    for k in range(3):
        save_png8(radiograph(k), tmp_path / "in" / f"img{k}.png")
    result = mura_cli.score_folder(
        ScoreConfig(
            input=str(tmp_path / "in"),
            out_dir=str(tmp_path / "out"),
            model=str(tiny_model),
            workers=0,
            engine="openvino",
        )
    )
    engine = result.run.runtime.engine
    assert engine["name"] == "torch" and engine["reason"].startswith(
        "torch (the OpenVINO export failed: RuntimeError"
    )
    assert "\n" not in engine["reason"] and result.images["probability"].notna().all()
    assert engine["setting"] == f"eager, pieces of {engines.TORCH_CPU_PIECE} images"  # how it ran


@pytest.mark.skipif(
    not all(engines.can_export(name) for name in engines.EXPORTED), reason="needs both exported engines"
)
def test_under_auto_a_failed_export_gives_way_to_the_next_engine(tiny_model, tmp_path, monkeypatch):
    first, second = engines.EXPORTED
    real = engines.export

    def failing_first(engine, *args, **kwargs):
        if engine == first:
            raise RuntimeError("the exporter\ncrashed")
        return real(engine, *args, **kwargs)

    monkeypatch.setattr(engines, "export", failing_first)
    model = mura_cli.load_model(tiny_model)
    auto = Predictor(model, create_runtime("cpu", "fp32"), engine="auto", engine_cache=tmp_path)
    assert auto.engine.name == second
    assert (
        f"the {engines.LABELS[first]} export failed: RuntimeError: the exporter crashed" in auto.engine.reason
    )
    named = Predictor(model, create_runtime("cpu", "fp32"), engine=first, engine_cache=tmp_path / "other")
    assert named.engine.name == "torch"  # asked for by name: no other engine is substituted
    assert named.engine.reason == (
        f"torch (the {engines.LABELS[first]} export failed: RuntimeError: the exporter crashed)"
    )


@needs_openvino
def test_auto_takes_the_first_usable_engine_only_for_fp32_on_the_cpu():
    import torch

    cpu = torch.device("cpu")
    first = next(name for name in engines.EXPORTED if engines.can_export(name))
    assert engines.EXPORTED == ("openvino", "onnxruntime")  # measured order (benchmarks/ENGINES.md)
    assert engines.choose_engine("auto", cpu, "fp32", "abc")[0] == first == "openvino"
    assert engines.choose_engine("auto", cpu, "fp32", "abc", exclude=(first,))[0] == (
        "onnxruntime" if engines.can_export("onnxruntime") else "torch"
    )
    assert engines.choose_engine("auto", cpu, "bf16", "abc") == (
        "torch",
        f"torch ({engines.LABELS[first]} is used for fp32 only, not bf16)",
    )
    assert engines.choose_engine("auto", torch.device("cuda"), "fp32", "abc")[0] == "torch"
    assert engines.choose_engine("auto", cpu, "fp32", "")[0] == "torch"  # a module the caller built
    with pytest.raises(ValueError, match="--engine openvino: OpenVINO runs here on the CPU only"):
        engines.choose_engine("openvino", torch.device("cuda"), "fp32", "abc")


def test_auto_passes_over_engines_that_are_not_installed(monkeypatch):
    import torch

    cpu = torch.device("cpu")
    installed = {"openvino": None, "onnxruntime": "1.32.0"}
    monkeypatch.setattr(engines, "installed", lambda name: installed[name] is not None)
    monkeypatch.setattr(engines, "engine_version", lambda name: installed[name])
    assert engines.choose_engine("auto", cpu, "fp32", "abc") == (
        "onnxruntime",
        "ONNX Runtime 1.32.0 (auto: fp32 on the CPU)",
    )
    assert engines.choose_engine("auto", cpu, "bf16", "abc") == (
        "torch",
        "torch (ONNX Runtime is used for fp32 only, not bf16)",  # the installed engine's reason
    )
    with pytest.raises(ValueError, match="--engine openvino: OpenVINO is not installed"):
        engines.choose_engine("openvino", cpu, "fp32", "abc")
    installed["onnxruntime"] = None
    assert engines.choose_engine("auto", cpu, "fp32", "abc") == (
        "torch",
        "torch (neither OpenVINO nor ONNX Runtime is installed)",
    )
    with pytest.raises(ValueError, match=r"ONNX Runtime is not installed \(pip install 'mura-cli\[onnx\]'\)"):
        engines.choose_engine("onnxruntime", cpu, "fp32", "abc")


def test_prefetching_keeps_order_raises_the_producers_error_and_stops_when_closed():
    import threading
    import time

    from mura_cli.inference.batches import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise ValueError("cannot decode")

    got = []
    with pytest.raises(ValueError, match="cannot decode"):
        for item in prefetched(broken()):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    stream = prefetched(endless())
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    time.sleep(0.3)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count <= 6  # the producer stopped a step or two ahead
    assert not any(t.name == "mura-cli-decode" for t in threading.enumerate())


def test_a_broken_engine_install_and_a_missing_exporter_fall_back_with_their_reason(monkeypatch):
    """An engine that is found but fails to import, or whose exporter is missing, is passed over by
    auto (torch runs, the reason is said) and refused with that reason when asked for by name."""
    import torch

    cpu = torch.device("cpu")
    monkeypatch.setattr(engines, "installed", lambda name: name == "openvino")
    monkeypatch.setattr(engines, "missing_exporters", lambda name: [])

    def broken(name):
        raise ImportError("libopenvino.so.2600: cannot open shared object file")

    monkeypatch.setattr(engines, "engine_version", broken)
    name, why = engines.choose_engine("auto", cpu, "fp32", "abc")
    assert name == "torch" and "OpenVINO is installed but does not import (ImportError: libopenvino" in why
    with pytest.raises(ValueError, match="--engine openvino: OpenVINO is installed but does not import"):
        engines.choose_engine("openvino", cpu, "fp32", "abc")
    monkeypatch.setattr(engines, "installed", lambda name: name == "onnxruntime")
    monkeypatch.setattr(
        engines, "missing_exporters", lambda name: ["onnxscript"] if name == "onnxruntime" else []
    )
    name, why = engines.choose_engine("auto", cpu, "fp32", "abc")
    assert (name, why) == (
        "torch",
        "torch (ONNX Runtime's export needs onnxscript (pip install 'mura-cli[onnx]'))",
    )
    with pytest.raises(ValueError, match="ONNX Runtime's export needs onnxscript"):
        engines.choose_engine("onnxruntime", cpu, "fp32", "abc")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_cached_export_runs_without_the_exporter_packages(engine, tiny_model, tmp_path, monkeypatch):
    """Once a model's export is in the cache, running it needs the engine only: a machine (or a later
    install) without onnxscript/onnx still uses it; a model without one is refused for that reason."""
    model = mura_cli.load_model(tiny_model)
    runtime = create_runtime("cpu", "fp32")
    first = Predictor(model, runtime, engine=engine, engine_cache=tmp_path)
    assert first.engine.name == engine
    monkeypatch.setattr(engines, "missing_exporters", lambda name: ["onnxscript"])
    again = Predictor(model, runtime, engine=engine, engine_cache=tmp_path)
    assert again.engine.name == engine and again.engine.export_sha256 == first.engine.export_sha256
    with pytest.raises(ValueError, match="export needs onnxscript"):
        Predictor(model, runtime, engine=engine, engine_cache=tmp_path / "empty")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_in_pieces_gives_each_image_the_same_features(engine, resnet_model, tmp_path):
    """Score's setting (pieces of the batch side by side, one core each) and the other one (every core
    on each layer of the whole batch) give each image torch's features, in order, for a batch that is
    not a multiple of the piece size and for one image."""
    model = mura_cli.load_model(resnet_model)
    predictor = Predictor(model, create_runtime("cpu", "fp32"), engine=engine, engine_cache=tmp_path)
    folder = predictor.backbone.folder
    if engine == "openvino":
        backbones = [engines.OpenVinoBackbone(folder, hint=hint) for hint in engines.OPENVINO_HINTS]
    else:
        backbones = [engines.OnnxRuntimeBackbone(folder, threads=2, split=split) for split in (True, False)]
    x = torch.randn(2 * engines.PIECE + 1, *model.config.input_size)
    expected = predictor.model.forward_features(x).detach()
    assert f"pieces of {engines.PIECE}" in backbones[0 if engine == "onnxruntime" else 1].setting
    assert "whole batch" in backbones[1 if engine == "onnxruntime" else 0].setting
    for backbone in backbones:
        np.testing.assert_allclose(backbone(x).numpy(), expected.numpy(), atol=1e-4)
        np.testing.assert_allclose(backbone(x[:1]).numpy(), expected[:1].numpy(), atol=1e-4)
        backbone.close()
        with pytest.raises(RuntimeError, match="was closed"):  # not a division by zero or a None call
            backbone(x[:1])


def test_pieces_come_back_in_order_and_a_failure_waits_for_the_running_ones():
    """Pieces that end out of order are put back in order; when one fails, its error is raised only
    after every piece that had started has ended (none runs on into the next batch)."""
    import threading
    import time

    running, lock = [0], threading.Lock()

    def run(piece):
        with lock:
            running[0] += 1
        try:
            if piece[0] >= 100:  # fails at once
                raise RuntimeError(f"piece from {int(piece[0])} failed")
            time.sleep(0.2 if piece[0] == 4 else 0.0)  # a piece that ends after those behind it
            return piece * 10
        finally:
            with lock:
                running[0] -= 1

    pieces = engines._Pieces(2, run)
    batch = np.arange(7, dtype=np.float32)
    np.testing.assert_array_equal(pieces(batch), batch * 10)
    failing = np.array([100, 101, 4, 5], dtype=np.float32)  # fails while the slow piece still runs
    with pytest.raises(RuntimeError, match="piece from 100 failed"):
        pieces(failing)
    assert running[0] == 0
    sizes = []
    pieces = engines._Pieces(2, lambda piece: sizes.append(len(piece)) or piece)
    pieces(np.arange(2, dtype=np.float32))  # a batch of 2 on 2 workers: one image each
    assert sorted(sizes) == [1, 1]


def test_piece_threads_all_start_before_the_first_batch_and_no_more_after():
    """The pool's threads are started when the backbone is made, never while a run is under way
    (a thread started during a run was where a `score` run once hung)."""
    import threading

    def engine_threads():
        return {t.ident for t in threading.enumerate() if t.name.startswith("mura-cli-engine")}

    before = engine_threads()
    pieces = engines._Pieces(3, lambda piece: piece + 1)
    started = engine_threads() - before
    assert len(started) == 3
    ready = {t.ident for t in threading.enumerate()}
    for size in (1, 2, 7, 32):
        batch = np.arange(size, dtype=np.float32)
        np.testing.assert_array_equal(pieces(batch), batch + 1)
    assert {t.ident for t in threading.enumerate()} - ready == set()  # no thread of any kind started
    assert engine_threads() - before == started


class _FakeRequest:
    """An OpenVINO infer request stand-in: doubles its input into one output buffer that it reuses,
    filled only by ``wait`` (as a real request's result is there only once it has ended); ``fail``
    makes start_async raise, ``fail_wait`` makes wait raise."""

    def __init__(self, log, fail=False, fail_wait=False):
        self.log, self.fail, self.fail_wait = log, fail, fail_wait
        self.buffer, self.pending = np.full(engines.PIECE, np.nan, dtype=np.float32), None

    def start_async(self, piece):
        if self.fail:
            raise RuntimeError("request could not start")
        assert self.pending is None, "started while still running"
        self.log.append(("start", id(self)))
        self.pending = piece

    def wait(self):
        self.log.append(("wait", id(self)))
        if self.pending is not None:
            self.buffer[: len(self.pending)] = self.pending * 2
            self.buffer[len(self.pending) :] = np.nan
            self.pending = None
        if self.fail_wait:
            raise RuntimeError("inference failed")

    def get_output_tensor(self, index):
        return types.SimpleNamespace(data=self.buffer[: len(self.buffer) - np.isnan(self.buffer).sum()])


def test_openvino_pieces_run_on_its_requests_in_order_and_a_failure_awaits_the_started_ones():
    """The throughput setting feeds the batch's pieces to OpenVINO's requests asynchronously (no
    Python threads), copies each result before its request is reused, gives the images back in
    order, and when a request fails (to start, or while running) waits for every other one started
    before raising."""
    log = []
    backbone = object.__new__(engines.OpenVinoBackbone)
    backbone.hint = "THROUGHPUT"
    backbone.requests = [_FakeRequest(log), _FakeRequest(log)]
    batch = torch.arange(2 * engines.PIECE * 3 + 1, dtype=torch.float32)
    np.testing.assert_array_equal(backbone(batch).numpy(), batch.numpy() * 2)
    assert sum(event == "start" for event, _ in log) == 7  # 13 images: six pieces of 2, one of 1
    first, second = (id(r) for r in backbone.requests)
    assert log[:3] == [("start", first), ("start", second), ("wait", first)]  # the second keeps running
    log.clear()
    backbone.requests = [_FakeRequest(log), _FakeRequest(log, fail=True)]
    with pytest.raises(RuntimeError, match="could not start"):
        backbone(batch)
    assert log == [("start", id(backbone.requests[0])), ("wait", id(backbone.requests[0]))]
    log.clear()
    backbone.requests = [_FakeRequest(log, fail_wait=True), _FakeRequest(log)]
    with pytest.raises(RuntimeError, match="inference failed"):
        backbone(batch)
    assert all(r.pending is None for r in backbone.requests)  # the second was awaited too


def test_replacing_a_broken_entry_never_deletes_a_whole_one(tmp_path):
    """Two runs may both find an entry broken; the slower must not delete the whole entry that the
    faster one has meanwhile renamed into place."""
    target = tmp_path / "entry"

    def write(folder, whole: bool):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"graph")
        sha = engines._files_sha256(folder, "onnxruntime") if whole else "stale"
        (folder / "meta.json").write_text(json.dumps({"export_sha256": sha}), encoding="utf-8")

    write(target, whole=False)
    engines._discard_broken(target, "onnxruntime")
    assert not target.exists() and list(tmp_path.iterdir()) == []  # broken: gone, no trash left
    write(target, whole=True)  # another run's fresh entry, seen as broken a moment ago
    engines._discard_broken(target, "onnxruntime")
    assert engines.cached_export(target, "onnxruntime") is not None and list(tmp_path.iterdir()) == [target]


def test_torch_on_the_cpu_runs_a_batch_in_pieces_with_the_whole_batchs_features(tiny_model):
    """Eager torch forwards a CPU batch in pieces of TORCH_CPU_PIECE images (faster there), each image's
    features those of the whole batch in one call."""
    model = mura_cli.load_model(tiny_model).model.eval()
    calls = []
    forward = model.forward_features
    model.forward_features = lambda part: calls.append(len(part)) or forward(part)
    backbone = engines.TorchBackbone(model, create_runtime("cpu", "fp32"))
    x = torch.randn(2 * engines.TORCH_CPU_PIECE + 3, *mura_cli.load_model(tiny_model).config.input_size)
    with torch.inference_mode():
        whole = forward(x)
    pieces = backbone(x)
    assert calls == [engines.TORCH_CPU_PIECE, engines.TORCH_CPU_PIECE, 3]
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_evaluates_deletion_test_reuses_the_scoring_engine_and_gives_its_probabilities(
    engine, tiny_model, tmp_path, monkeypatch
):
    """One engine for the whole evaluate run (no second export check, no engine threads started
    mid-run), and the deletion test's probabilities are those of a predictor made for it alone."""
    from mura_cli.config import EvalConfig
    from mura_cli.evaluation import evaluate as evaluate_module
    from mura_cli.evaluation import faithfulness
    from mura_cli.inputs.boxes import boxes_for, read_boxes
    from mura_cli.inputs.datasets import read_dataset

    from conftest import learnable_mura

    monkeypatch.setenv(ENGINE_CACHE_ENV, str(tmp_path / "engines"))
    built = []
    real_init = Predictor.__init__
    monkeypatch.setattr(
        Predictor, "__init__", lambda self, *a, **k: built.append(1) or real_init(self, *a, **k)
    )
    boxes = tmp_path / "boxes.csv"
    data = learnable_mura(tmp_path / "data", patients=12, boxes=boxes)
    config = EvalConfig(
        data=str(data),
        out_dir=str(tmp_path / "ev"),
        model=str(tiny_model),
        workers=0,
        bootstrap=10,
        boxes=str(boxes),
        engine=engine,
    )
    result = evaluate_module.evaluate(config)
    assert len(built) == 1
    assert result.metrics["run"]["engine"]["name"] == engine
    images = result.images.dropna(subset=["probability_boxes_filled"])
    assert len(images) > 0
    alone = Predictor(
        mura_cli.load_model(tiny_model), create_runtime("cpu", "fp32"), heatmaps=False, engine=engine
    )
    rows = read_dataset(data).set_index("rel_path").loc[images["path"]].reset_index()
    records = evaluate_module.records_from_table(rows)
    found = read_boxes(str(boxes))
    expected = faithfulness.deletion_scores(
        alone, records, [boxes_for(r.rel_path, found) for r in records], 32, 0
    )
    np.testing.assert_allclose(
        images["probability_boxes_filled"].to_numpy(float), expected["probability_boxes_filled"], atol=1e-6
    )
