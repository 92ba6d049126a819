"""Names and choices, as pure data (no torch, no I/O)."""

from __future__ import annotations

from enum import IntEnum

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AGGREGATIONS = ("mean", "max")
RESIZE_POLICIES = ("letterbox", "stretch")
# image logit from the feature map: avg = mean-pool then linear (timm); lse = linear per cell, then
# log-mean-exp of the cell logits (mura_cli.pooling)
POOLINGS = ("avg", "lse")
TTA_MODES = ("none", "flip")  # test-time augmentation: flip = the image and its left-right mirror

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
# environment variable naming an extra folder of user models (searched before the shipped ones)
MODELS_DIR_ENV = "MURA_CLI_MODELS"

RESEARCH_NOTICE = "Research use only, not a medical device."


class ExitCode(IntEnum):
    OK = 0  # every image was scored
    FATAL = 1  # nothing could be scored, or a fatal error
    USAGE = 2  # bad command line
    PARTIAL = 3  # some images failed, the rest were scored and written
    OUTPUT = 4  # the results could not be written (disk full, read-only, permission); finished rows are kept
