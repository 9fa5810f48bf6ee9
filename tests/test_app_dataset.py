"""AppTest of the Dataset page: choices -> DatasetConfig, histogram, sizes, preview, errors."""

import zipfile

import numpy as np
from PIL import Image

from kt_core.models import ARCHITECTURES
from test_app_support import app_at, chart_traces, errors, no_exceptions, draft


def test_classes_and_k_per_class_produce_the_config_and_exact_counts():
    at = app_at("dataset")
    no_exceptions(at)
    at.multiselect(key="dataset_classes").set_value(["0", "1", "2"])
    at.number_input(key="dataset_k").set_value(5)
    at.selectbox(key="dataset_augment").select("light")
    at.run()
    no_exceptions(at)
    cfg = draft(at).config.dataset
    assert (cfg.name, cfg.classes, cfg.per_class, cfg.augment) == ("sklearn_digits", ["0", "1", "2"], 5, "light")
    bars = {t["name"]: t for t in chart_traces(at)}
    assert bars["train"]["x"] == ["0", "1", "2"] and bars["train"]["y"] == [5, 5, 5]
    sizes = at.dataframe[0].value.set_index("split")["images"].to_dict()
    assert sizes["train"] == 15 and sizes["val"] == sum(bars["val"]["y"])
    # Shaped for the default source, as training will shape it (8x8 digits -> small_cnn's input).
    c, h, w = ARCHITECTURES.get("small_cnn").input_size
    assert any(f"**3 classes** · images **{h}×{w}**, **{c}** channel(s)" in m.value for m in at.markdown)
    assert len(at.get("image")) == 15  # the preview: every training image of 3 classes x 5


def test_an_image_folder_zip_by_server_path_is_read_with_its_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    archive = tmp_path / "shapes.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as z:
        for cls in ("cats", "dogs"):
            for i in range(6):
                path = tmp_path / f"{cls}{i}.png"
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)
                z.write(path, f"data/{cls}/{i}.png")
    at = app_at("dataset")
    at.selectbox(key="dataset_name").select("zip").run()
    at.text_input(key="dataset_root").input(str(archive)).run()
    no_exceptions(at)
    assert not errors(at)
    assert at.multiselect(key="dataset_classes").options == ["cats", "dogs"]
    assert sum(sum(t["y"]) for t in chart_traces(at)) == 12  # train + val + the held-out test split


def test_a_server_path_outside_the_allowed_roots_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    at = app_at("dataset")
    at.selectbox(key="dataset_name").select("image_folder").run()
    at.text_input(key="dataset_root").input("/etc").run()
    no_exceptions(at)
    assert any("outside the folders this server may read" in e for e in errors(at))


def test_a_single_class_selection_is_a_message():
    at = app_at("dataset")
    at.multiselect(key="dataset_classes").set_value(["7"]).run()
    no_exceptions(at)
    assert any("fewer than two classes" in e for e in errors(at))
