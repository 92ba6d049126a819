"""Names and choices, as pure data (no torch, no I/O)."""

from __future__ import annotations

from enum import Enum, IntEnum


class Choice(str, Enum):
    """A named choice; a member equals its string (``Precision.FP32 == "fp32"``), so configs and JSON
    hold plain strings while the command line lists and checks the members."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Precision(Choice):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class ReducedPrecision(Choice):  # what check-precision compares with fp32
    BF16 = "bf16"
    FP16 = "fp16"


class Aggregation(Choice):  # image probabilities -> study probability
    MEAN = "mean"
    MAX = "max"


class Resize(Choice):  # keep the aspect ratio and pad, or stretch to the input size
    LETTERBOX = "letterbox"
    STRETCH = "stretch"


class Pooling(Choice):
    """Image logit from the feature map: avg = mean-pool then linear (timm); lse = linear per cell, then
    log-mean-exp of the cell logits (mura_cli.model.pooling)."""

    AVG = "avg"
    LSE = "lse"


class TTA(Choice):  # test-time augmentation: flip = the image and its left-right mirror
    NONE = "none"
    FLIP = "flip"


class Scheduler(Choice):
    COSINE = "cosine"
    PLATEAU = "plateau"


class Monitor(Choice):  # validation study metric that chooses the best epoch
    AUROC = "auroc"
    KAPPA = "kappa"
    # AUROC plus the mean deletion drop on the validation positives with boxes (needs --boxes), weighed
    # equally: an epoch wins whenever it gains more deletion drop than it loses AUROC
    AUROC_DELETION = "auroc+deletion"


class ClassWeights(Choice):  # positive-class weights: none, one for all, or per body part (MURA paper)
    NONE = "none"
    GLOBAL = "global"
    PER_PART = "per-part"


class GroupBy(Choice):  # which images form a study (mura_cli.inputs.discover.regroup)
    AUTO = "auto"  # MURA folder names, else the DICOM StudyInstanceUID, else the folder
    FOLDER = "folder"  # the images of one folder
    IMAGE = "image"  # every image alone
    DICOM_STUDY = "dicom-study"  # the DICOM StudyInstanceUID, else the folder


class Engine(Choice):  # where the backbone runs (mura_cli.inference.engines)
    AUTO = "auto"
    TORCH = "torch"
    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"


PRECISIONS = Precision.values()
ENGINES = Engine.values()
AGGREGATIONS = Aggregation.values()
RESIZE_POLICIES = Resize.values()
POOLINGS = Pooling.values()
TTA_MODES = TTA.values()

# DICOM Modality (0008,0060) values scored by default: computed and digital radiography. Others get a
# reason row unless named with --allow-modality (fluoroscopy, angiography, mammography and "other"
# are X-ray images too, but not what a musculoskeletal radiograph model was trained on).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
MODALITY_NAMES = {
    "CR": "computed radiography",
    "DX": "digital radiography",
    "RF": "fluoroscopy",
    "XA": "X-ray angiography",
    "MG": "mammography",
    "OT": "other",
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "SEG": "a segmentation",
    "RTDOSE": "a radiotherapy dose",
    "RTSTRUCT": "radiotherapy structures",
    "RTPLAN": "a radiotherapy plan",
    "RTIMAGE": "a radiotherapy image",
    "SR": "a structured report",
    "PR": "a presentation state",
    "XC": "an external camera photograph",
    "OP": "ophthalmic photography",
    "ECG": "an ECG",
    "IO": "intra-oral X-ray",
    "PX": "panoramic X-ray",
    "SM": "slide microscopy",
}

RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

DEFAULT_OUT_DIR = "mura-results"
DEFAULT_MODEL_NAME = "fracatlas-efficientnet-lite0"

RESEARCH_NOTICE = "Research use only, not a medical device."


class ExitCode(IntEnum):
    OK = 0  # every image was scored
    FATAL = 1  # nothing could be scored, or a fatal error
    USAGE = 2  # bad command line
    PARTIAL = 3  # some images failed, the rest were scored and written
    OUTPUT = 4  # the results could not be written (disk full, read-only, permission); finished rows are kept
