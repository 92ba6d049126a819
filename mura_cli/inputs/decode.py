"""One image file -> a 2-D float32 grayscale array in [0, 1], at full dynamic range.

The format is told from the file's content (a PNG named .dcm is still read as PNG).
DICOM goes through the display pipeline of PS3.3 C.11: Modality LUT (rescale or Modality LUT
Sequence), VOI LUT (LUT Sequence or window, a percentile window when neither is present), then the
MONOCHROME1 / Presentation LUT Shape INVERSE inversion. Every failure is a DecodeError with a reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageFile, ImageOps
from pydicom import uid
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi, pixel_array

from mura_cli import choices
from mura_cli.errors import DecodeError
from mura_cli.inputs import sniff

# images declaring more pixels than this are refused before decoding (a 43x35 cm detector at 100 um is
# about 15 Mpixel): a decompression bomb costs nothing but a line in images.csv
MAX_PIXELS = 80_000_000

# default window when a DICOM image carries no VOI information: these percentiles of its values
# an image smaller than this on its short side holds no radiograph (a 1x1 PNG, an icon): a reason row,
# not a probability
MIN_SIDE = 32
# a multi-frame DICOM is scored on its first frame, the only one decoded; a header declaring more frames
# than this is refused (a bound on what reading the file may cost, whatever it claims)
MAX_FRAMES = 10_000
# a PNG/JPEG in which more than this share of pixels is clearly coloured is a photograph or a rendering,
# not a radiograph (radiographs stored as RGB have R = G = B, a few coloured markers stay far below it)
MAX_COLOURED_SHARE = 0.05
_COLOURED = 32  # max - min over R, G, B (0-255) from which a pixel counts as coloured

DEFAULT_WINDOW_PERCENTILES = (0.5, 99.5)
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def decode_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to float32 grayscale in [0, 1] (0 black, 1 white as displayed)."""
    pixels = decode_pixels(path)
    return _scaled(pixels, 255.0) if pixels.dtype == np.uint8 else pixels


def decode_pixels(path: str | Path) -> np.ndarray:
    """Decode ``path`` to grayscale as displayed: uint8 (0-255) for 8-bit PNG and JPEG, float32 in
    [0, 1] for everything with more depth (16-bit PNG, DICOM). The model's canvas is made from this
    (``geometry.place_on_canvas``): an 8-bit image is resized as 8 bits, 2.2x faster than through
    float for a 768 px JPEG and within one grey level of it (benchmarks/ENGINES.md, 2026-12-03)."""
    path = Path(path)
    try:
        kind = sniff.sniff_file(path)
        if kind is None:
            raise DecodeError(str(path), _unknown_content(path))
        image = _decode_dicom(path) if kind == sniff.DICOM else _decode_raster(path)
    except DecodeError:
        raise
    except ColourPicture as exc:
        raise DecodeError(str(path), str(exc)) from None
    except sniff.NotRegularFile as exc:
        raise DecodeError(str(path), str(exc)) from None
    except FileNotFoundError:
        raise DecodeError(str(path), "file disappeared before it could be read") from None
    except PermissionError:
        raise DecodeError(str(path), "permission denied") from None
    except MemoryError:
        raise DecodeError(str(path), "image too large to decode in memory") from None
    except Exception as exc:  # any decoder failure is this file's problem, not the run's
        raise DecodeError(str(path), f"cannot decode ({type(exc).__name__}: {exc})") from None
    if image.ndim != 2 or min(image.shape) < 1:
        raise DecodeError(str(path), f"unexpected image shape {image.shape}")
    if min(image.shape) < MIN_SIDE:
        height, width = image.shape
        raise DecodeError(
            str(path),
            f"{width} x {height} pixels, too small for a radiograph (the short side must "
            f"be at least {MIN_SIDE})",
        )
    if image.dtype != np.uint8 and not np.isfinite(image).all():
        raise DecodeError(str(path), "image holds NaN or infinite values")
    return image


def _unknown_content(path: Path) -> str:
    if path.stat().st_size == 0:
        return "empty file"
    suffix = path.suffix.lower()
    if suffix in choices.DICOM_EXTENSIONS:
        return (
            f"named {suffix} but not readable as DICOM: neither the DICM marker nor a data set at its start "
            "(damaged, or another format)"
        )
    if suffix in choices.RASTER_EXTENSIONS:
        return f"named {suffix} but its content is not a PNG or JPEG image (damaged, or another format)"
    return "not a PNG, JPEG or DICOM file"


# ---------------------------------------------------------------- PNG / JPEG


def _decode_raster(path: Path) -> np.ndarray:
    # Pillow's switch is process-wide and importing WeasyPrint turns it on (it renders what it can of
    # broken web images); a cut PNG or JPEG must stay an error here, never half an image with a score
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            _check_size(path, img.width, img.height)
            img = ImageOps.exif_transpose(img)  # phone or scanner JPEGs may be stored rotated
            img.load()
            return _raster_to_gray(img)


def _check_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise DecodeError(
            str(path),
            f"declares {width} x {height} pixels, over the limit of {MAX_PIXELS:,} "
            "(refused without decoding)",
        )


def _raster_to_gray(img: Image.Image) -> np.ndarray:
    """uint8 for 8-bit modes, float32 in [0, 1] for 16-bit and float ones."""
    mode = img.mode
    # the divisions below are in place: the same values as a new array, without allocating and
    # faulting in a second image-sized buffer (measured 0.3 against 1.6 ms for a 768 px JPEG)
    if mode.startswith("I;16"):
        return _scaled(np.asarray(img, dtype=np.uint16), 65535.0)
    if mode == "I":  # Pillow's mode for 16-bit grayscale PNG in some versions
        return _scaled(np.clip(np.asarray(img, dtype=np.int64), 0, 65535), 65535.0)
    if mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if mode != "L":
        if mode not in ("1", "LA", "La"):
            _refuse_colour(
                np.asarray(img.convert("RGB").reduce(4) if min(img.size) >= 64 else img.convert("RGB"))
            )
        img = img.convert("L")  # RGB, RGBA, P, LA, 1, CMYK: luminance, alpha ignored
    return np.array(img, dtype=np.uint8)  # 8 bits: kept as they are (decode_pixels), writable


def _scaled(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Integer pixels / full_scale as a new float32 array."""
    out = values.astype(np.float32)
    out /= np.float32(full_scale)
    return out


# ---------------------------------------------------------------- DICOM


def _decode_dicom(path: Path) -> np.ndarray:
    with warnings.catch_warnings():  # pydicom's remarks on odd but readable files are not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        return _dicom_pixels(path)


def _dicom_pixels(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path, force=True, defer_size="1 MB")  # pixel data read only once it is wanted
    _ensure_transfer_syntax(ds)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(path, columns, rows)
    if not any(tag in ds for tag in _PIXEL_TAGS):
        if "DirectoryRecordSequence" in ds:
            raise DecodeError(str(path), "a DICOMDIR (an index of other DICOM files), not an image")
        meta = getattr(ds, "file_meta", None)
        sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
        name = getattr(sop, "name", str(sop)) if sop else "no SOP class given"
        raise DecodeError(str(path), f"DICOM without pixel data ({name})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > MAX_FRAMES:
        raise DecodeError(
            str(path), f"declares {frames:,} frames, over the limit of {MAX_FRAMES:,} (refused)"
        )
    _check_pixel_length(path, ds)
    try:
        pixels = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array  # multi-frame: only frame 1
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise DecodeError(str(path), f"cannot decompress {name} ({exc})") from None
    except AttributeError as exc:  # pydicom: "Missing required element: (0028,0100) 'Bits Allocated'"
        raise DecodeError(str(path), f"DICOM header incomplete for its pixel data ({exc})") from None
    except ValueError as exc:
        raise DecodeError(str(path), f"pixel data does not match its header ({exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour (RGB or YBR converted to RGB by pydicom): luminance, no LUTs
        return _colour_to_gray(pixels, ds)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    shown = _apply_voi(values, ds)
    if photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        shown = 1.0 - shown
    return shown.astype(np.float32)


def _check_pixel_length(path: Path, ds) -> None:
    """A file that ends inside its pixel data (an interrupted copy or download) says so."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if getattr(syntax, "is_deflated", False):  # offsets count the inflated stream, not the file
        return
    element = ds.get_item("PixelData")
    offset, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    if offset is None or length is None or length == 0xFFFFFFFF:  # undefined length: encapsulated frames
        return
    available = path.stat().st_size - offset
    if available < length:
        raise DecodeError(
            str(path),
            f"pixel data truncated: the file holds {max(available, 0):,} of the "
            f"{length:,} bytes its header declares (a damaged or incomplete copy)",
        )


def _ensure_transfer_syntax(ds) -> None:
    """A data set stored without file meta (no preamble) still tells its encoding; record it so the
    pixel data can be read."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        syntax = uid.ImplicitVRLittleEndian
    else:
        syntax = uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def _refuse_colour(rgb: np.ndarray) -> None:
    """DecodeError (without a path; decode_image adds it) for a clearly coloured picture."""
    rgb = rgb.astype(np.int16)
    share = float(((rgb.max(axis=-1) - rgb.min(axis=-1)) >= _COLOURED).mean())
    if share > MAX_COLOURED_SHARE:
        raise ColourPicture(f"a colour picture ({share:.1%} of its pixels coloured), not a radiograph")


class ColourPicture(ValueError):
    """A photograph or rendering where a grayscale radiograph was expected."""


def _colour_to_gray(pixels: np.ndarray, ds) -> np.ndarray:
    bits = int(ds.get("BitsStored", 8) or 8)
    rgb = np.clip(pixels.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
    _refuse_colour(np.rint(rgb * 255.0).astype(np.uint8))
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def _apply_voi(values: np.ndarray, ds) -> np.ndarray:
    """VOI LUT Sequence, else window centre/width, else a percentile window; output in [0, 1]."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        lut = np.asarray(item.LUTData, dtype=np.float64)
        out = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)  # a LUT takes integer inputs
        low, high = float(lut.min()), float(lut.max())
        return np.clip((out - low) / max(high - low, 1e-12), 0.0, 1.0)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        shown = window(values, center, width, function)
        if not _saturated(shown):
            return shown
        # a stored window that leaves (almost) every pixel black or white does not belong to these
        # pixel values (seen in re-encoded files): treat it as absent
    return percentile_window(values)


def _saturated(shown: np.ndarray, share: float = 0.99) -> bool:
    return bool((shown <= 0.0).mean() >= share or (shown >= 1.0).mean() >= share)


def percentile_window(values: np.ndarray) -> np.ndarray:
    """The default VOI: a linear window between low and high percentiles of the image's values."""
    low, high = np.percentile(values, DEFAULT_WINDOW_PERCENTILES)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The VOI window functions of DICOM PS3.3 C.11.2.1.2, mapped to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR with width 1 is a threshold at the centre
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, str):
        try:
            value = value[0]
        except (IndexError, TypeError):
            pass
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
