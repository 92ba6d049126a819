"""Tell a file's format from its first bytes, whatever its name says."""

from __future__ import annotations

from pathlib import Path

from mura_cli.files import NotRegularFile, regular_file_problem

__all__ = ["NotRegularFile", "regular_file_problem", "sniff_bytes", "sniff_file"]

PNG, JPEG, DICOM = "png", "jpeg", "dicom"

_HEAD_BYTES = 132


def _looks_like_bare_dicom(head: bytes) -> bool:
    """DICOM written without the 128-byte preamble and 'DICM' marker: the data set starts right away
    with a tag of group 0x0002 (file meta) or 0x0008 (identifying), element < 0x0100: little-endian
    (explicit or implicit VR) or big-endian (explicit VR, the only big-endian encoding)."""
    if len(head) < 8:
        return False
    vr = head[4:6]
    explicit = vr.isalpha() and vr.isupper()
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group not in (0x0002, 0x0008) or element >= 0x0100:
            continue
        implicit_length = int.from_bytes(head[4:8], "little")
        if explicit or (order == "little" and implicit_length < 0x10000):
            return True
    return False


def sniff_bytes(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(head) >= _HEAD_BYTES and head[128:132] == b"DICM":
        return DICOM
    if _looks_like_bare_dicom(head):
        return DICOM
    return None


def sniff_file(path: Path) -> str | None:
    """The format of ``path`` from its content, or None when it is none of PNG, JPEG, DICOM. Only
    regular files are opened (NotRegularFile otherwise)."""
    problem = regular_file_problem(path)
    if problem:
        raise NotRegularFile(problem)
    with open(path, "rb") as handle:
        return sniff_bytes(handle.read(_HEAD_BYTES))
