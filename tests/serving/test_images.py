"""serving.images, the one decode/resize/normalise of image versions: torchvision's transforms as
the reference for the pixels, and every way an element can be unusable refused naming it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.images import preprocess, preprocess_one
from serving.protocol.errors import InvalidInput, PayloadTooLarge
from tests.support.image_models import encode, image_spec, photos, png_bomb


@pytest.fixture(scope="module")
def photo():
    return photos()[0]  # china.jpg, 427x640


def test_pixels_are_torchvisions_resize_crop_normalize(photo):
    # torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize on a 640x427 photo,
    # its geometry worked out by hand: the short side to 256, the long one int(256*640/427) =
    # 383; the crop starts at round((383-224)/2) = 80 across and 16 down
    spec = image_spec(224, resize_to=256)
    data = encode(photo, "PNG")  # lossless: the reference sees the same pixels
    big = np.asarray(Image.fromarray(photo).resize((383, 256), Image.Resampling.BILINEAR),
                     np.float32) / 255
    want = ((big[16:240, 80:304] - spec.mean) / spec.std).transpose(2, 0, 1)
    got = preprocess_one(data, spec)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_exact_resize_bgr_and_nhwc(photo):
    spec = image_spec(48, resize="exact", channel_order="BGR", layout="NHWC",
                      mean=[0, 0, 0], std=[1, 1, 1], resize_to=None)
    got = preprocess_one(encode(photo, "PNG"), spec)
    want = np.asarray(Image.fromarray(photo).resize((48, 48), Image.Resampling.BILINEAR),
                      np.float32)[..., ::-1] / 255
    assert got.shape == (48, 48, 3)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_exif_orientation_is_applied(photo):
    # the same pixels stored rotated, with EXIF saying "rotate 90 CW to display": identical input
    upright = encode(photo, "PNG")
    img = Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    spec = image_spec(32)
    np.testing.assert_allclose(preprocess_one(buf.getvalue(), spec),
                               preprocess_one(upright, spec), atol=1e-6)


def test_grey_and_rgba_images_become_rgb(photo):
    spec = image_spec(32)
    grey = encode(photo[..., 0], "PNG")
    rgba = encode(np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]), "PNG")
    assert preprocess_one(grey, spec).shape == (3, 32, 32)
    np.testing.assert_allclose(preprocess_one(rgba, spec), preprocess_one(encode(photo, "PNG"),
                                                                          spec), atol=1e-6)


def test_jpeg_png_and_webp_are_taken(photo):
    spec = image_spec(32)
    batch = preprocess([encode(photo, f) for f in ("JPEG", "PNG", "WEBP")], spec)
    assert batch.shape == (3, 3, 32, 32)
    # lossy formats stay close to the lossless one
    assert np.abs(batch[0] - batch[1]).mean() < 0.1 and np.abs(batch[2] - batch[1]).mean() < 0.1


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match=r"input 'image' element 2: .*more pixels than "
                                              r"this version's limit of 40000000"):
        preprocess([encode(photos()[1], "JPEG"), encode(photos()[1], "PNG"), bomb],
                   image_spec(32))
    # under Pillow's own bomb limit (179 MP), over the version's
    with pytest.raises(PayloadTooLarge, match=r"input 'image' element 0: 8000x8000 pixels "
                                              r"is more than this version's limit of 40000000"):
        preprocess([png_bomb(8000, 8000)], image_spec(32))
    # a version's own, lower limit
    with pytest.raises(PayloadTooLarge, match="limit of 1000 pixels per image"):
        preprocess_one(encode(np.zeros((40, 40, 3), np.uint8), "PNG"), image_spec(32,
                                                                              max_pixels=1000))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_file_is_refused_naming_the_element(photo, fmt):
    data = encode(photo, fmt)
    with pytest.raises(InvalidInput, match=rf"input 'image' element 1: the {fmt} file is "
                                           r"truncated or corrupt"):
        preprocess([data, data[: len(data) // 2]], image_spec(32))


def test_a_corrupt_file_is_refused_naming_the_element(photo):
    data = bytearray(encode(photo, "PNG"))
    data[100:140] = b"\xff" * 40  # inside the IDAT: the checksum and the stream break
    with pytest.raises(InvalidInput, match=r"input 'image' element 0: the PNG file is "
                                           r"truncated or corrupt"):
        preprocess([bytes(data)], image_spec(32))


@pytest.mark.parametrize("data, why", [
    (b"", "empty"), (b"hello, not an image", "not an image this version takes"),
])
def test_what_is_no_image_is_refused(data, why):
    with pytest.raises(InvalidInput, match=f"input 'image' element 0: {why}"):
        preprocess([data], image_spec(32))


def test_a_format_the_version_does_not_take_is_refused(photo):
    gif = encode(photo, "GIF")
    with pytest.raises(InvalidInput, match=r"element 0: not an image this version takes "
                                           r"\(expected JPEG, PNG, WEBP\)"):
        preprocess([gif], image_spec(32))
    with pytest.raises(InvalidInput, match=r"expected JPEG\)"):
        preprocess([encode(photo, "PNG")], image_spec(32, formats=["JPEG"]))


def test_a_request_over_its_pixel_budget_is_refused_before_decoding(photo):
    data = encode(photo, "JPEG")  # 640x427
    spec = image_spec(32)
    assert preprocess([data] * 3, spec, max_total_pixels=3 * 640 * 427).shape[0] == 3
    with pytest.raises(PayloadTooLarge, match=r"input 'image': the request's 4 images hold "
                                              r"1093120 pixels, more than the limit of 819840"):
        preprocess([data] * 4, spec, max_total_pixels=3 * 640 * 427)


def _pillow_only(data: bytes, spec) -> np.ndarray:
    from serving.images import decode, open_header, resized, to_pixels

    return to_pixels(resized(decode(open_header(data, spec, "image", 0), "image", 0), spec), spec)


@pytest.mark.parametrize("variant", ["baseline", "progressive", "444", "grey", "exif-6",
                                     "exif-3", "cmyk"])
def test_jpegs_decoded_by_simplejpeg_are_pillows_pixels(photo, variant):
    """The faster JPEG decoder gives exactly the pixels Pillow gives (the optimizer judged
    variants on these); CMYK, which it does not take, falls back to Pillow."""
    img = Image.fromarray(photo)
    kw: dict = {"quality": 90}
    if variant == "progressive":
        kw["progressive"] = True
    elif variant == "444":
        kw["subsampling"] = 0
    elif variant == "grey":
        img = img.convert("L")
    elif variant == "cmyk":
        img = img.convert("CMYK")
    elif variant.startswith("exif"):
        exif = Image.Exif()
        exif[0x0112] = int(variant[-1])
        kw["exif"] = exif
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    spec = image_spec(224, resize_to=256)
    np.testing.assert_array_equal(preprocess_one(buf.getvalue(), spec),
                                  _pillow_only(buf.getvalue(), spec))
    if variant == "exif-6":  # the orientation was applied: 640x427 stored, shown 427x640
        from serving.images import open_image

        assert open_image(buf.getvalue(), spec, "image", 0).size == (427, 640)
