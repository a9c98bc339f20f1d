"""``optiserve bench --input-file DIR``: a directory's images as request rows (the live send is
in tests/serving/test_image_server.py)."""

from __future__ import annotations

import base64

import pytest

from optiserve.bench import load_inputs
from tests.support.image_models import encode, photos

META = {"name": "pets", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "parameters": {"image_preprocessing": {"image_input": "image"}}}


def test_a_directory_of_images_is_one_row_per_image(tmp_path):
    jpeg, png = encode(photos()[0], "JPEG"), encode(photos()[1], "PNG")
    (tmp_path / "a.jpg").write_bytes(jpeg)
    (tmp_path / "b.PNG").write_bytes(png)
    (tmp_path / "notes.txt").write_text("skipped")
    rows = load_inputs(str(tmp_path), META)
    assert [r["image"].shape for r in rows] == [(1,), (1,)]
    assert [r["image"][0] for r in rows] == [jpeg, png]
    urls = load_inputs(str(tmp_path), META, json_body=True)
    assert urls[1]["image"][0] == "data:image/png;base64," + base64.b64encode(png).decode()


def test_a_directory_for_a_model_that_takes_no_images_is_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="takes ids, x, not encoded images"):
        load_inputs(str(tmp_path), {"name": "t", "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})
    with pytest.raises(ValueError, match="holds no images"):
        load_inputs(str(_empty(tmp_path)), META)


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d
