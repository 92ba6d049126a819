"""Decoding to grayscale at full range; DICOM LUT chain; twins decode alike; bad files get reasons."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from mura_cli.errors import DecodeError
from mura_cli.inputs.decode import decode_image, decode_pixels, window
from mura_cli.inputs.geometry import crop_region, fit_geometry, place_on_canvas

from conftest import radiograph, save_png8, save_png16


def test_16bit_png_keeps_its_full_range(tmp_path):
    values = np.tile(np.array([[0, 1000, 40000, 65535]], dtype=np.uint16), (32, 8))  # 32 x 32
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    decoded = decode_image(path)
    np.testing.assert_allclose(decoded, values / 65535.0, atol=1e-7)
    assert decoded[0, 2] > 0.6  # not clipped at 255


def test_8bit_pixels_and_their_canvas_are_exactly_the_formulas(tmp_path):
    """decode_image gives uint8 / 255 in float32 bit for bit; decode_pixels keeps the 8 bits, and their
    canvas is Pillow's 8-bit resize exactly, within one grey level of the float path (resized in float,
    times 255, rounded once), which float images still take bit for bit: a speed change that moved a
    pixel further would move the model's answers."""
    pixels = np.random.default_rng(5).integers(0, 256, (97, 131), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(pixels).save(path)
    decoded = decode_image(path)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, pixels.astype(np.float32) / 255.0)
    kept = decode_pixels(path)
    assert kept.dtype == np.uint8
    np.testing.assert_array_equal(kept, pixels)
    geometry = fit_geometry(97, 131, 64, 64, "letterbox")
    size = (geometry.new_w, geometry.new_h)
    from_float = place_on_canvas(decoded, geometry, 64, 64)
    resized = np.asarray(Image.fromarray(decoded, mode="F").resize(size, Image.BILINEAR))
    expected = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(crop_region(from_float, geometry), expected)
    assert from_float.dtype == np.uint8 and int(from_float.sum()) == int(expected.sum())  # black padding
    from_bytes = place_on_canvas(kept, geometry, 64, 64)
    eight_bit = np.asarray(Image.fromarray(pixels, mode="L").resize(size, Image.BILINEAR))
    np.testing.assert_array_equal(crop_region(from_bytes, geometry), eight_bit)
    assert int(from_bytes.sum()) == int(eight_bit.sum())
    assert np.abs(from_bytes.astype(int) - from_float.astype(int)).max() <= 1  # rounding, no more
    assert kept.flags.writeable  # the caller's own array, as decode_image's is


def test_deep_images_stay_float_for_the_canvas(tmp_path):
    values = np.tile(np.array([[0, 1000, 40000, 65535]], dtype=np.uint16), (32, 8))
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert decode_pixels(tmp_path / "deep.png").dtype == np.float32  # 16 bits are not cut to 8


def test_8bit_and_16bit_twins_decode_identically(tmp_path):
    image = radiograph(1)
    a = decode_image(save_png8(image, tmp_path / "a.png"))
    b = decode_image(save_png16(image, tmp_path / "b.png"))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_become_luminance(tmp_path, mode):
    gray = Image.fromarray(np.rint(radiograph(2) * 255).astype(np.uint8), mode="L")
    path = tmp_path / f"img_{mode}.png"
    gray.convert(mode).save(path)
    decoded = decode_image(path)
    assert decoded.shape == (90, 70)
    np.testing.assert_allclose(decoded, np.asarray(gray) / 255.0, atol=2 / 255)


def test_jpeg_decodes_to_gray(tmp_path):
    path = tmp_path / "x.jpeg"
    Image.fromarray(np.rint(radiograph(3) * 255).astype(np.uint8)).convert("RGB").save(path, quality=95)
    decoded = decode_image(path)
    assert decoded.ndim == 2 and 0.0 <= decoded.min() and decoded.max() <= 1.0
    assert abs(decoded.mean() - radiograph(3).mean()) < 0.02


def test_dicom_lossless_reencoding_decodes_identically(rg3_files):
    plain, jpeg2000 = rg3_files
    np.testing.assert_array_equal(decode_image(plain), decode_image(jpeg2000))


def test_monochrome1_is_inverted_after_the_window(rg3_files, tmp_path):
    """MONOCHROME1 with window (c, w) equals its MONOCHROME2 twin with pixels and window mirrored."""
    ds = pydicom.dcmread(rg3_files[0])
    top = 2 ** int(ds.BitsStored) - 1
    twin = pydicom.dcmread(rg3_files[0])
    twin.PhotometricInterpretation = "MONOCHROME2"
    twin.PixelData = (top - ds.pixel_array.astype(np.int64)).astype(ds.pixel_array.dtype).tobytes()
    twin.WindowCenter = top - float(ds.WindowCenter)
    twin.save_as(tmp_path / "mono2.dcm")
    original, mirrored = decode_image(rg3_files[0]), decode_image(tmp_path / "mono2.dcm")
    np.testing.assert_allclose(original, mirrored, atol=2e-3)
    assert original.std() > 0.1  # a real image, not a flat one


def test_rescaled_twin_decodes_identically(rg3_files, tmp_path):
    ds = pydicom.dcmread(rg3_files[0])
    stored = ds.pixel_array.astype(np.int64)
    ds.PixelData = (stored + 1000).astype(np.uint16).tobytes()
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleIntercept = -1000
    ds.RescaleSlope = 1
    ds.save_as(tmp_path / "rescaled.dcm")
    np.testing.assert_allclose(decode_image(rg3_files[0]), decode_image(tmp_path / "rescaled.dcm"), atol=1e-6)


def test_presentation_lut_inverse_inverts(rg3_files, tmp_path):
    ds = pydicom.dcmread(rg3_files[0])
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "m2.dcm")
    ds.PresentationLUTShape = "INVERSE"
    ds.save_as(tmp_path / "m2_inverse.dcm")
    np.testing.assert_allclose(
        decode_image(tmp_path / "m2.dcm"), 1.0 - decode_image(tmp_path / "m2_inverse.dcm"), atol=1e-6
    )


def test_missing_window_uses_percentile_default(rg3_files, tmp_path):
    ds = pydicom.dcmread(rg3_files[0])
    del ds.WindowCenter
    del ds.WindowWidth
    ds.save_as(tmp_path / "nowindow.dcm")
    decoded = decode_image(tmp_path / "nowindow.dcm")
    values = ds.pixel_array.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    expected = 1.0 - np.clip((values - low) / (high - low), 0, 1)  # MONOCHROME1: inverted after VOI
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    assert decoded.std() > 0.1


def test_window_functions_follow_the_standard():
    values = np.array([0.0, 50.0, 100.0, 150.0, 200.0])
    linear = window(values, center=100, width=101)
    np.testing.assert_allclose(linear, [0.0, 0.005, 0.505, 1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(window(values, 100, 100, "LINEAR_EXACT"), [0, 0, 0.5, 1, 1])
    assert window(np.array([100.0]), 100, 50, "SIGMOID")[0] == pytest.approx(0.5)


def test_shared_dicoms_all_decode(shared_dicom):
    files = sorted(shared_dicom.glob("*.dcm"))
    assert len(files) >= 5
    for path in files:
        image = decode_image(path)
        assert image.dtype == np.float32 and image.ndim == 2
        assert image.std() > 0.05, f"{path.name} decoded flat"


def test_modality_lut_sequence_file(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "fo-dicom_CR-ModalitySequenceLUT.dcm")
    assert "ModalityLUTSequence" in ds
    image = decode_image(shared_dicom / "fo-dicom_CR-ModalitySequenceLUT.dcm")
    assert 0.1 < image.mean() < 0.9


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"hello, I am text", "named .png but its content is not a PNG or JPEG image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "cannot decode"),
    ],
)
def test_bad_files_raise_decode_error_with_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as info:
        decode_image(path)
    assert reason in info.value.reason and str(path) in str(info.value)


def test_png_named_dcm_is_read_as_png(tmp_path):
    path = save_png8(radiograph(4), tmp_path / "actually_png.dcm")
    assert decode_image(path).shape == (90, 70)


def test_voi_lut_sequence_is_applied(rg3_files, tmp_path):
    """A VOI LUT Sequence ramp from `first` over `n` entries acts as a linear window on those values."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(rg3_files[0])
    values = ds.pixel_array.astype(np.float64)
    first, n = int(np.percentile(values, 5)), 512
    item = Dataset()
    item.add_new(0x00283002, "US", [n, first, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(round(k * 65535 / (n - 1))) for k in range(n)])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    del ds.WindowCenter
    del ds.WindowWidth
    ds.save_as(tmp_path / "voilut.dcm")
    expected = 1.0 - np.clip((values - first) / (n - 1), 0, 1)  # then MONOCHROME1 inversion
    np.testing.assert_allclose(decode_image(tmp_path / "voilut.dcm"), expected, atol=2e-5)


def test_header_only_dicom_reasons_say_what_the_file_is():
    from pydicom.data import get_testdata_file

    with pytest.raises(DecodeError, match="a DICOMDIR \\(an index of other DICOM files\\), not an image"):
        decode_image(get_testdata_file("DICOMDIR"))
    with pytest.raises(DecodeError, match="without pixel data \\(MR Image Storage\\)"):
        decode_image(get_testdata_file("priv_SQ.dcm"))  # no SOPClassUID in the data set: the file meta's


def test_damaged_or_headerless_dicom_reasons_name_the_actual_problem():
    from pydicom.data import get_testdata_file

    with pytest.raises(DecodeError, match=r"pixel data truncated: the file holds 8,130 of the 8,192 bytes"):
        decode_image(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(DecodeError, match=r"named \.dcm but not readable as DICOM"):
        decode_image(get_testdata_file("no_meta.dcm"))  # one stray byte before the data set
    with pytest.raises(DecodeError, match=r"DICOM header incomplete .*Bits Allocated"):
        decode_image(get_testdata_file("meta_missing_tsyntax.dcm"))
    # big-endian without preamble is still recognised as DICOM, so its reason is about its content
    with pytest.raises(DecodeError, match=r"without pixel data \(RT Ion Plan Storage\)"):
        decode_image(get_testdata_file("ExplVR_BigEndNoMeta.dcm"))
    assert decode_image(get_testdata_file("image_dfl.dcm")).shape == (512, 512)  # deflated: offsets differ


def test_a_cut_png_stays_an_error_after_weasyprint_is_imported(tmp_path):
    import weasyprint  # noqa: F401  (it sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process)

    data = (save_png8(radiograph(3), tmp_path / "whole.png")).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError):
        decode_image(tmp_path / "cut.png")
