"""Where the backbone runs: eager PyTorch, or on the CPU OpenVINO or ONNX Runtime (measured 2-2.8x
and about 1.7x faster than eager torch there).

Only the backbone (image -> feature map) moves to an engine; the head, the calibration and the CAM
stay in torch fp32 on the engine's feature map, so probabilities and heatmaps still come from one
pass and mean what they mean with torch. An export is made once per model weights, input size,
engine and engine version, kept in a cache folder (written whole or not at all), and checked against
torch on a probe batch when it is made: probabilities within 1e-4 and the same heatmap peak cells,
else torch is used and the reason is said in one line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mura_cli import choices, environment

PROBE_TOLERANCE = 1e-4  # largest probability difference to torch an export may show on the probe batch
EXPORT_FORMAT = 1  # bump when what is exported changes
# the engines that run an export, in auto's order of preference: on this project's 2-core CPU, score
# end to end ran 1.09x faster with OpenVINO than ONNX Runtime when each engine was measured first in
# one of the repeats (benchmarks/ENGINES.md, 2026-12-02 14:50), although ONNX Runtime's raw forward
# was 1.03-1.08x faster
EXPORTED = ("openvino", "onnxruntime")
LABELS = {"torch": "torch", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
FILES = {"openvino": ("model.xml", "model.bin"), "onnxruntime": ("model.onnx",)}  # an export's files


@dataclass(frozen=True)
class EngineInfo:
    """What run.json records about the engine."""

    name: str  # 'torch', 'openvino' or 'onnxruntime'
    version: str
    reason: str
    export_sha256: str = ""  # of the exported model files, '' for torch
    probe_max_difference: float | None = None  # probabilities, engine vs torch, when the export was made
    setting: str = ""  # how the engine runs a batch (its backbone's ``setting``)

    def to_dict(self) -> dict:
        return asdict(self)


EXPORTER_MODULES = {"openvino": (), "onnxruntime": ("onnxscript", "onnx")}  # to make an export


def installed(name: str) -> bool:
    """Whether an exported engine's runtime (its module has the engine's name) is installed: found,
    not imported, since importing them costs seconds at every start."""
    return importlib.util.find_spec(name) is not None


def missing_exporters(name: str) -> list[str]:
    """The modules that making ``name``'s exports needs and that are not installed."""
    return [m for m in EXPORTER_MODULES[name] if importlib.util.find_spec(m) is None]


def can_export(name: str) -> bool:
    """Whether ``name`` is installed together with what makes its exports (torch's ONNX exporter)."""
    return installed(name) and not missing_exporters(name)


def engine_version(name: str) -> str | None:
    """The installed version of an exported engine (imports it), None when it is not installed."""
    return importlib.import_module(name).__version__ if installed(name) else None


def default_cache_dir() -> Path:
    """$MURA_CLI_ENGINE_CACHE, default ~/.cache/mura-cli/engines (mura_cli.environment)."""
    return environment.current().engine_cache_dir


def choose_engine(
    requested: str,
    device: torch.device,
    precision: str,
    weights_sha256: str,
    exclude: tuple[str, ...] = (),
    cached=lambda name: False,
) -> tuple[str, str]:
    """(engine, why): auto takes the first of EXPORTED (not in ``exclude``: e.g. its export failed)
    that can run fp32 on the CPU here, torch elsewhere; an engine asked for by name that cannot run
    here is a ValueError. ``cached(name)``: whether this model's export for ``name`` is already in the
    cache (then the exporter packages are not needed)."""
    if requested not in choices.ENGINES:
        raise ValueError(f"engine must be one of {list(choices.ENGINES)}")
    if requested == "torch":
        return "torch", "torch (asked for)"
    candidates = [n for n in EXPORTED if n not in exclude] if requested == "auto" else [requested]
    reasons = []
    for name in candidates:
        unsupported = _unsupported(name, device, precision, weights_sha256, cached)
        if not unsupported:
            try:  # found is not importable: a broken install falls through like a missing one
                version = engine_version(name)
            except Exception as exc:  # noqa: BLE001 - any import failure; said in the reason
                unsupported = f"{LABELS[name]} is installed but does not import ({type(exc).__name__}: {exc})"
            else:
                why = "asked for" if requested == name else "auto: fp32 on the CPU"
                return name, f"{LABELS[name]} {version.split('-')[0]} ({why})"
        reasons.append((name, " ".join(unsupported.split())[:300]))
    if requested != "auto":
        raise ValueError(f"--engine {requested}: {reasons[0][1]}")
    present = [reason for name, reason in reasons if installed(name)]  # device, precision or model
    if not present and exclude:
        return "torch", "torch"  # every usable engine was tried; the caller says why they failed
    return "torch", f"torch ({present[0] if present else 'neither OpenVINO nor ONNX Runtime is installed'})"


def _unsupported(name: str, device: torch.device, precision: str, weights_sha256: str, cached) -> str:
    """Why ``name`` cannot run this model here, '' when it can (``cached``: see choose_engine)."""
    label = LABELS[name]
    if device.type != "cpu":
        return f"{label} runs here on the CPU only"
    if precision != "fp32":
        return f"{label} is used for fp32 only, not {precision}"
    if not installed(name):
        extra = " (pip install 'mura-cli[onnx]')" if name == "onnxruntime" else ""
        return f"{label} is not installed{extra}"
    if not weights_sha256:
        return "a model without a weights file cannot be exported"
    missing = missing_exporters(name)
    needs_torch = name == "onnxruntime" and _torch_version() < (2, 6)
    if (missing or needs_torch) and _cached_here(name, cached):
        return ""  # made earlier (or elsewhere): running it needs only the engine
    if missing:
        return f"{label}'s export needs {' and '.join(missing)} (pip install 'mura-cli[onnx]')"
    if needs_torch:
        return f"{label} needs torch >= 2.6 for its export (torch.onnx's dynamo exporter), not {torch.__version__}"
    return ""


def _cached_here(name: str, cached) -> bool:
    try:
        return bool(cached(name))
    except Exception:  # noqa: BLE001 - an engine that does not import: said by the caller's import check
        return False


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


# on the CPU, eager torch runs a batch in pieces of this many images: the shipped model forwarded at
# 47-52 images/s in pieces of 4 or 8 against 25-29 for a batch of 32 (the activations of 8 images stay
# in the caches; 2-core CPU, 2026-12-02); accelerators take the whole batch
TORCH_CPU_PIECE = 8


class TorchBackbone:
    """The model's own forward_features under the runtime's autocast (in pieces on the CPU)."""

    def __init__(self, model: torch.nn.Module, runtime):
        self.model, self.runtime = model, runtime
        self.piece = TORCH_CPU_PIECE if runtime.device.type == "cpu" else 0
        self.setting = f"eager, pieces of {self.piece} images" if self.piece else "eager, the whole batch"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.runtime.autocast():
            if not self.piece or len(x) <= self.piece:
                return self.model.forward_features(x)
            return torch.cat([self.model.forward_features(part) for part in x.split(self.piece)])


_CORE = None


def _core():
    """One OpenVINO Core for the process, kept alive as long as any model compiled with it."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


# With OpenVINO's THROUGHPUT hint or ONNX Runtime's ``split``, a batch runs in pieces of PIECE images,
# side by side, one core each: on the 2-core CPU that ran the backbone 1.15-1.2x faster than every
# core on each layer of the whole batch, and `score` with decoding beside it 1.1-1.15x faster
# (benchmarks/ENGINES.md, 2026-12-02 17:09 and 17:17); pieces of 1, 2 and 4 measured alike, 8 slower.
# score's default (see OPENVINO_HINT).
PIECE = 2


def cut(array: np.ndarray, workers: int) -> list[np.ndarray]:
    """The batch in pieces of PIECE images at most; a small batch in smaller pieces, so that every
    worker gets one (a batch of 2 on 2 cores: one image each)."""
    size = max(1, min(PIECE, -(-len(array) // max(1, workers))))
    return [array[i : i + size] for i in range(0, len(array), size)]


class _Pieces:
    """Runs ``run(piece)`` over a batch cut into pieces on ``workers`` threads (the engine releases
    the GIL) and puts the results back in order. Every thread is started here, before any batch, so
    that none is started while a run decodes, forks workers or infers. A failure is raised once every
    piece already started has ended, so that no inference is left running into the next call."""

    def __init__(self, workers: int, run):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.workers, self.run = max(1, workers), run
        self.pool = None
        if self.workers > 1:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mura-cli-engine")
            # one task per thread that waits for all the others: the pool starts all its threads now
            # (it starts one per task while none is idle) and never starts another afterwards
            barrier = threading.Barrier(self.workers)
            for future in [self.pool.submit(barrier.wait, 60) for _ in range(self.workers)]:
                future.result()

    def close(self) -> None:
        """Ends the threads (the pool and its bound ``run`` otherwise live until the cyclic GC)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def __call__(self, array: np.ndarray) -> np.ndarray:
        pieces = cut(array, self.workers)
        if self.pool is None or len(pieces) == 1:
            return np.concatenate([self.run(piece) for piece in pieces])
        from concurrent.futures import wait

        futures = [self.pool.submit(self.run, piece) for piece in pieces]
        try:
            return np.concatenate([future.result() for future in futures])
        finally:  # after a failure: the pieces not started are dropped, the running ones awaited
            for future in futures:
                future.cancel()
            wait(futures)


# OpenVINO's performance hint for score and evaluate. LATENCY: one request per batch, every core on
# each layer. THROUGHPUT (score's): one stream per core or so, each with its own infer request, fed
# pieces of the batch (see PIECE) asynchronously, with no Python thread. A `score` run once hung
# (2026-12-02) in Thread.start of a piece thread started mid-batch (the cause was not identified); the
# engines now start no thread per batch, and 50 score runs in this setting ran through (2026-12-03)
OPENVINO_HINT = "THROUGHPUT"
# ONNX Runtime likewise: split (score's) runs pieces on one-thread runs side by side, from threads
# started with the backbone; off: all intra-op threads on each layer of the whole batch
ONNXRUNTIME_SPLIT = True
OPENVINO_HINTS = ("LATENCY", "THROUGHPUT")


def _wait_all(requests) -> None:
    """Waits for every request, then raises the first one's failure, if any."""
    failures = []
    for request in requests:
        try:
            request.wait()
        except BaseException as failure:  # noqa: BLE001 - Ctrl-C too: re-raised once all have ended
            failures.append(failure)
    if failures:
        raise failures[0]


class OpenVinoBackbone:
    """A compiled OpenVINO model of forward_features (fp32), fed numpy, giving torch; ``hint`` is
    OpenVINO's performance hint (OPENVINO_HINT). Each image's result is the same either way."""

    def __init__(self, folder: Path, hint: str = OPENVINO_HINT):
        core = _core()
        self.folder, self.hint = folder, hint
        # f32 explicitly: on CPUs with AMX or AVX512-BF16, OpenVINO's default is bf16 (issue 16)
        self.compiled = core.compile_model(
            core.read_model(str(folder / "model.xml")),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint},
        )
        streams = (
            1 if hint == "LATENCY" else int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        )
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, streams))]
        self.setting = (
            "latency hint: the whole batch, every core on each layer"
            if hint == "LATENCY"
            else f"throughput hint: pieces of {PIECE} images on {len(self.requests)} infer requests"
        )

    def _infer(self, array: np.ndarray) -> np.ndarray:
        """The pieces of the batch started asynchronously on the requests in turn (piece k on request
        k mod n), each request waited for only when it is needed again, so that the other streams
        keep running meanwhile; no Python thread is involved (start_async and wait release the GIL).
        Every request started is awaited, even after a failure."""
        pieces, n = cut(array, len(self.requests)), len(self.requests)
        outputs: list[np.ndarray | None] = [None] * len(pieces)
        running: dict[int, int] = {}  # request index -> the piece it runs
        try:
            for k, piece in enumerate(pieces):
                if k % n in running:  # this request's previous piece: wait, keep its output (reused)
                    outputs[running.pop(k % n)] = self._collect(self.requests[k % n])
                self.requests[k % n].start_async(piece)
                running[k % n] = k
            for index, k in sorted(running.items(), key=lambda item: item[1]):
                del running[index]
                outputs[k] = self._collect(self.requests[index])
        finally:
            _wait_all([self.requests[index] for index in running])
        return np.concatenate(outputs)

    def close(self) -> None:
        """Lets go of the requests and the compiled model (and so of the export's files)."""
        self.requests, self.compiled = [], None

    @staticmethod
    def _collect(request) -> np.ndarray:
        request.wait()
        return request.get_output_tensor(0).data.copy()  # the request reuses its output tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.requests:  # close() let go of them and of the compiled model
            raise RuntimeError(f"the OpenVINO model of {self.folder} was closed")
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        if self.hint == "LATENCY":
            return torch.from_numpy(self.compiled(array)[0])
        return torch.from_numpy(self._infer(array))


class OnnxRuntimeBackbone:
    """An ONNX Runtime session of forward_features on the CPU (all graph optimisations), fed numpy,
    giving torch, on as many threads as torch uses: with ``split`` (score's, ONNXRUNTIME_SPLIT) the
    batch in pieces (PIECE) side by side, each on one intra-op thread that does not spin; without it
    all of them on each layer of the whole batch."""

    def __init__(self, folder: Path, threads: int = 0, split: bool = ONNXRUNTIME_SPLIT):
        import onnxruntime as ort

        self.folder, self.split = folder, split
        # torch's thread count (one per core, or what OMP_NUM_THREADS / torch.set_num_threads say),
        # so that ONNX Runtime keeps to the same limit as the torch engine
        threads = threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if split else threads
        options.inter_op_num_threads = 1
        # a spinning thread takes the core a decoding thread or another piece's thread needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if split else "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its optimiser's remarks are not the user's business
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.pieces = _Pieces(threads if split else 1, self._run)
        self.setting = (
            f"split: pieces of {PIECE} images on {threads} one-thread runs side by side"
            if split
            else f"the whole batch on {threads} intra-op threads"
        )

    def close(self) -> None:
        """Ends the piece threads and lets go of the session (and so of the export's file)."""
        self.pieces.close()
        self.session = None

    def _run(self, piece: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: piece})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is None:
            raise RuntimeError(f"the ONNX Runtime session of {self.folder} was closed")
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.pieces(array) if self.split else self._run(array))


BACKBONES = {"openvino": OpenVinoBackbone, "onnxruntime": OnnxRuntimeBackbone}


class _Features(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def export_key(weights_sha256: str, config, engine: str, version: str, checks_peaks: bool) -> str:
    """What an export depends on: the weights and everything else that shapes the graph (architecture,
    input size, output stride, timm's version), the engine and its version, and whether its probe check
    compared heatmap peaks (an entry checked without them is not reused for a run with heatmaps)."""
    import timm

    text = json.dumps(
        [
            EXPORT_FORMAT,
            weights_sha256,
            config.architecture,
            list(config.input_size),
            config.output_stride,
            timm.__version__,
            engine,
            version,
            "fp32",
            checks_peaks,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _files_sha256(folder: Path, engine: str) -> str:
    digest = hashlib.sha256()
    for name in FILES[engine]:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def cached_export(folder: Path, engine: str = "openvino") -> dict | None:
    """The cache entry's record when it is whole and unchanged, else None (rebuilt by the caller)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return meta if meta.get("export_sha256") == _files_sha256(folder, engine) else None
    except (OSError, ValueError, TypeError):
        return None


def _convert(engine: str, model: torch.nn.Module, input_size, folder: Path) -> None:
    """Write ``engine``'s files of forward_features (any batch size) into ``folder``."""
    channels, height, width = input_size
    example = torch.zeros(2, channels, height, width)
    with warnings.catch_warnings():  # tracer and exporter remarks about the model's Python control flow
        warnings.simplefilter("ignore")
        if engine == "openvino":
            import openvino as ov

            converted = ov.convert_model(
                _Features(model).eval(), example_input=example[:1], input=[(-1, channels, height, width)]
            )
            ov.save_model(converted, str(folder / "model.xml"), compress_to_fp16=False)
            return
        missing = missing_exporters(engine)
        if missing:
            raise RuntimeError(
                f"torch's ONNX exporter needs {' and '.join(missing)} (pip install 'mura-cli[onnx]')"
            )
        with _quiet_loggers("torch.onnx", "torch.export", "onnxscript", "onnx_ir"):
            torch.onnx.export(
                _Features(model).eval(),
                (example,),
                str(folder / "model.onnx"),
                input_names=["image"],
                output_names=["features"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                external_data=False,
                dynamo=True,
                verbose=False,
            )


@contextmanager
def _quiet_loggers(*names: str):
    """Errors only from these loggers for the block: an exporter's progress remarks are not the
    user's business (a failure still raises)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _discard_broken(target: Path, engine: str) -> None:
    """Move a broken entry aside under a name of its own, then delete it: a whole entry that another
    run renamed into place meanwhile is moved back, not deleted."""
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.broken.", dir=target.parent)) / "entry"
    try:
        os.rename(target, trash)
    except OSError:  # gone already, or replaced: the rename of the new export below decides
        shutil.rmtree(trash.parent, ignore_errors=True)
        return
    if cached_export(trash, engine) is not None:
        try:
            os.rename(trash, target)
        except OSError:
            pass
    shutil.rmtree(trash.parent, ignore_errors=True)


def export(engine: str, model: torch.nn.Module, input_size, target: Path, meta: dict, verify) -> dict:
    """Convert forward_features for ``engine`` in a temporary folder beside ``target``, check it with
    ``verify(backbone) -> (largest probability difference, same peaks)`` and rename it into place, so
    that a concurrent run sees either no entry or a whole, checked one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert(engine, model, input_size, temp)
        backbone = BACKBONES[engine](temp)
        try:
            difference, same_peaks = verify(backbone)
        finally:
            backbone.close()  # the runtime lets go of the files (Windows keeps open files from deletion)
            del backbone
        meta = {
            **meta,
            "engine": engine,
            "export_sha256": _files_sha256(temp, engine),
            "probe_max_difference": difference,
            "probe_same_peaks": same_peaks,
            "probe_passed": difference <= PROBE_TOLERANCE and same_peaks,
        }
        (temp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if target.exists():
            whole = cached_export(target, engine)
            if whole is not None:  # another run put a whole entry there meanwhile: use that one
                shutil.rmtree(temp, ignore_errors=True)
                return whole
            _discard_broken(target, engine)
        try:
            os.rename(temp, target)
        except OSError as exc:  # another run renamed its entry into place first, or the cache is not writable
            shutil.rmtree(temp, ignore_errors=True)
            whole = cached_export(target, engine)
            if whole is None:
                raise OSError(f"cannot put the export into {target}: {exc}") from None
            return whole
        return meta
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
