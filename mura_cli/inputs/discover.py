"""Find every image below an input path and group the images into studies.

PNG/JPEG images form one study per folder; DICOM images are grouped by StudyInstanceUID, even across
folders. The MURA layout ``XR_<PART>/patientNNNNN/studyN_<positive|negative>/imageK.png`` gives body
part, patient and label. No patient demographics are read from DICOM.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from mura_cli import choices
from mura_cli.errors import InputError
from mura_cli.inputs import sniff
from mura_cli.inputs.names import printable_name

_MURA_PART = re.compile(r"^XR_([A-Z]+)$", re.IGNORECASE)
_MURA_PATIENT = re.compile(r"^patient(\d+)$", re.IGNORECASE)
_MURA_STUDY = re.compile(r"^study(\d+)_(positive|negative)$", re.IGNORECASE)
_DICOM_TAGS = ["StudyInstanceUID", "BodyPartExamined", "Modality"]
_PHI_TAGS = ["PatientID"]  # read only with include_phi


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute
    rel_path: str  # relative to the input root, '/' separators
    kind: str  # 'raster' or 'dicom' (from the name or, failing that, the content)
    study_id: str
    patient_id: str = ""
    body_part: str = ""
    label: int | None = None  # 1 abnormal/positive, 0 normal/negative, None unknown
    error: str = ""  # set when the file could not even be indexed
    # what the file was when found (links followed): `score --resume` re-scores an image whose size or
    # modification time changed since its row was written; -1 where unknown
    file_bytes: int = -1
    file_mtime_ns: int = -1
    study_source: str = "folder"  # what study_id came from: mura (folder names), dicom (its UID) or folder


@dataclass(frozen=True)
class Discovery:
    root: Path
    images: tuple[ImageRecord, ...]
    skipped: int = 0  # hidden files and files that are not images
    skipped_examples: tuple[str, ...] = field(default=())
    # sha256 over every found image's relative name and size: the same input gives the same value on any
    # machine or mount point (what `merge` compares between shards, which each see the whole input)
    fingerprint: str = ""
    notices: tuple[str, ...] = ()  # worth a line to the user (e.g. a flat folder grouped as one study)


@dataclass(frozen=True)
class MuraPath:
    body_part: str = ""
    patient_id: str = ""
    study: str = ""
    label: int | None = None


def parse_mura_path(parts: tuple[str, ...]) -> MuraPath:
    """Body part, patient and label from folder names in MURA's layout (any depth)."""
    body_part = patient = study = ""
    label = None
    for part in parts:
        if m := _MURA_PART.match(part):
            body_part = m.group(1).upper()
        elif m := _MURA_PATIENT.match(part):
            patient = f"patient{m.group(1)}"
        elif m := _MURA_STUDY.match(part):
            study = part
            label = 1 if m.group(2).lower() == "positive" else 0
    return MuraPath(body_part, patient, study, label)


def _file_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if path.is_symlink() and not path.exists():  # broken link or loop: reported if named like an image
        return (
            "raster"
            if suffix in choices.RASTER_EXTENSIONS
            else "dicom"
            if suffix in choices.DICOM_EXTENSIONS
            else None
        )
    if suffix in choices.RASTER_EXTENSIONS:
        return "raster"
    if suffix in choices.DICOM_EXTENSIONS:
        return "dicom"
    try:  # no known extension (or a UID-like name): only DICOM is recognised by content
        return "dicom" if sniff.sniff_file(path) == sniff.DICOM else None
    except PermissionError:  # may well be a DICOM file: reported (decoding says why), not skipped
        return "unreadable"
    except OSError:
        return None


def _walk(root: Path, unreadable: list):
    """Yield (path, hidden) for every file below root, sorted, without following folder links; folders
    that cannot be listed are appended to ``unreadable`` as (path, reason)."""

    def note(exc: OSError) -> None:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        unreadable.append((Path(exc.filename or root), f"folder cannot be read: {reason}"))

    for folder, dirs, files in os.walk(root, followlinks=False, onerror=note):
        hidden_dirs = sorted(d for d in dirs if d.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in hidden_dirs:
            yield Path(folder) / name, True
        for name in sorted(files):
            yield Path(folder) / name, name.startswith(".")


def _folder_study(rel_folder: str, root: Path, mura: MuraPath) -> str:
    if mura.study and mura.body_part and mura.patient_id:
        return f"XR_{mura.body_part}/{mura.patient_id}/{mura.study}"
    return rel_folder if rel_folder != "." else printable_name(root.name)


def _record(
    path: Path, root: Path, kind: str, include_phi: bool = False, allowed: frozenset[str] = frozenset()
) -> ImageRecord:
    rel = printable_name(path.relative_to(root).as_posix())
    rel_folder = printable_name(path.parent.relative_to(root).as_posix())
    mura = parse_mura_path(path.parts)
    record = ImageRecord(
        path=path,
        rel_path=rel,
        kind=kind,
        study_id=_folder_study(rel_folder, root, mura),
        patient_id=mura.patient_id,
        body_part=mura.body_part,
        label=mura.label,
        study_source="mura" if mura.study and mura.body_part and mura.patient_id else "folder",
    )
    if path.is_symlink() and not path.exists():
        return replace(record, error="broken symbolic link or link loop")
    try:
        problem = sniff.regular_file_problem(path)
        found = path.stat()
    except OSError as exc:
        problem = "permission denied" if isinstance(exc, PermissionError) else f"cannot be looked at ({exc})"
    if problem:
        return replace(record, error=problem)
    record = replace(record, file_bytes=found.st_size, file_mtime_ns=found.st_mtime_ns)
    return _with_dicom_header(record, include_phi, allowed) if kind == "dicom" else record


def modality_problem(modality: str, allowed: frozenset[str]) -> str:
    """Why a DICOM of this Modality is not scored ('' when it is: CR, DX, those allowed, or none given)."""
    code = modality.strip().upper()
    if not code or code in choices.RADIOGRAPH_MODALITIES or code in allowed:
        return ""
    name = choices.MODALITY_NAMES.get(code, "not a radiograph modality")
    return f"modality {code} ({name}) is not a radiograph; --allow-modality {code} scores it anyway"


def _header_values(path: Path, include_phi: bool) -> dict[str, str]:
    """The few header values discovery uses, as stripped strings. pydicom converts a value (and may
    remark on it) when it is first read, so reading happens inside the silenced block too."""
    tags = _DICOM_TAGS + (_PHI_TAGS if include_phi else [])
    with warnings.catch_warnings():  # pydicom's remarks on odd but readable headers are not the user's
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=tags)
        return {tag: str(ds.get(tag, "") or "").strip() for tag in tags}


def _with_dicom_header(
    record: ImageRecord, include_phi: bool, allowed: frozenset[str] = frozenset()
) -> ImageRecord:
    try:
        values = _header_values(record.path, include_phi)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, AttributeError) as exc:
        return replace(record, error=_header_error(exc))
    problem = modality_problem(values["Modality"], allowed)
    if problem:
        return replace(record, error=problem)
    patient = values.get("PatientID", "") if include_phi else ""
    uid = values["StudyInstanceUID"]
    return replace(
        record,
        study_id=uid or record.study_id,
        study_source="dicom" if uid else record.study_source,
        body_part=values["BodyPartExamined"].upper() or record.body_part,
        patient_id=patient or record.patient_id,
    )


def _header_error(exc: Exception) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file disappeared before it could be read"
    return f"unreadable DICOM header ({type(exc).__name__}: {exc})"


def discover(
    input_path: str | Path, include_phi: bool = False, allow_modalities=(), group_by: str = "auto"
) -> Discovery:
    """Every image below ``input_path`` (a folder or one file), in a stable order, grouped into studies
    by ``group_by`` (see `regroup`). DICOM files of a modality other than CR, DX and
    ``allow_modalities`` get a reason row instead of a score."""
    found = _discover(input_path, include_phi, allow_modalities)
    images = regroup(found.images, group_by, found.root)
    return replace(found, images=images, notices=_grouping_notices(images, group_by))


def _discover(input_path: str | Path, include_phi: bool, allow_modalities) -> Discovery:
    allowed = frozenset(m.strip().upper() for m in allow_modalities)
    given = Path(input_path).expanduser()
    if not given.exists():
        raise InputError(f"{given}: no such file or folder")
    given = given.resolve()
    if given.is_file():
        kind = _file_kind(given)
        if kind is None:
            raise InputError(f"{given}: not a PNG, JPEG or DICOM file")
        return Discovery(
            root=given.parent, images=(_record(given, given.parent, kind, include_phi, allowed),)
        )
    images, skipped, examples, unreadable = [], 0, [], []
    for path, hidden in _walk(given, unreadable):
        kind = None if hidden else _file_kind(path)
        if kind is None:
            skipped += 1
            if len(examples) < 5:
                examples.append(printable_name(path.relative_to(given).as_posix()))
            continue
        images.append(_record(path, given, kind, include_phi, allowed))
    for folder, reason in unreadable:  # a row each, so that the run reports them and exits 3
        rel = printable_name(folder.relative_to(given).as_posix()) if folder != given else "."
        images.append(ImageRecord(path=folder, rel_path=rel + "/", kind="folder", study_id=rel, error=reason))
    return Discovery(
        root=given,
        images=tuple(images),
        skipped=skipped,
        skipped_examples=tuple(examples),
        fingerprint=input_fingerprint(images),
    )


def regroup(records, group_by: str, root: Path) -> tuple[ImageRecord, ...]:
    """Studies by ``group_by``: auto (MURA folder names, else the DICOM StudyInstanceUID, else the
    folder: what discovery found), folder, image (each image alone) or dicom-study (the UID, else the
    folder)."""
    if group_by == "auto":
        return tuple(records)
    out = []
    for r in records:
        folder = r.rel_path.rsplit("/", 1)[0] if "/" in r.rel_path else printable_name(root.name)
        if group_by == "image":
            study, source = r.rel_path, "image"
        elif group_by == "dicom-study" and r.study_source == "dicom":
            study, source = r.study_id, "dicom"
        else:
            study, source = folder, "folder"
        out.append(r if r.kind == "folder" else replace(r, study_id=study, study_source=source))
    return tuple(out)


MANY_IMAGES_FOR_ONE_STUDY = 12  # more views than a radiograph study has: likely unrelated images


def _grouping_notices(records, group_by: str) -> tuple[str, ...]:
    """Under auto, a line for each folder whose many images became one study by the folder rule alone."""
    if group_by != "auto":
        return ()
    sizes: dict[str, int] = {}
    for r in records:
        if r.study_source == "folder" and r.kind != "folder":
            sizes[r.study_id] = sizes.get(r.study_id, 0) + 1
    return tuple(
        f"{n} images in {study} were grouped as one study (the images of a folder form a study); "
        "if they are unrelated, --group-by image scores each as a study of its own"
        for study, n in sizes.items()
        if n > MANY_IMAGES_FOR_ONE_STUDY
    )


def input_fingerprint(images) -> str:
    digest = hashlib.sha256()
    for record in images:
        digest.update(f"{record.rel_path}\0{record.file_bytes}\n".encode("utf-8", "backslashreplace"))
    return digest.hexdigest()


def screen_modalities(records, allow_modalities=()) -> list[ImageRecord]:
    """``records`` with a reason row for each DICOM file whose Modality is not a radiograph's (as discover
    does for score), for labelled tables that did not come through discover."""
    allowed = frozenset(m.strip().upper() for m in allow_modalities)
    screened = []
    for record in records:
        if not record.error and _file_kind(Path(record.path)) == "dicom":
            header = _with_dicom_header(record, include_phi=False, allowed=allowed)
            record = replace(record, error=header.error) if header.error else record
        screened.append(record)
    return screened


def records_from_table(table) -> list[ImageRecord]:
    """ImageRecords for the rows of a labelled table (see mura_cli.inputs.datasets)."""
    return [
        ImageRecord(
            path=Path(row["path"]),
            rel_path=row["rel_path"],
            kind="",
            study_id=row["study_id"],
            patient_id=row["patient_id"],
            body_part=row["body_part"],
            label=int(row["label"]),
        )
        for row in table.to_dict("records")
    ]
