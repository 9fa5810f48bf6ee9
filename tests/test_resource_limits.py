"""Declared sizes are checked against the file before anything is allocated: checkpoint zip bombs,
stride-0 tensors claiming 10^12 values, lying safetensors headers, decompression-bomb images and
zips. Every hostile file is generated here."""

from __future__ import annotations

import struct
import zipfile

import pytest
import torch
from PIL import Image

from kt_core.checkpoints import read_checkpoint
from kt_core.errors import CheckpointError, DatasetError


def test_a_checkpoint_zip_entry_that_inflates_past_its_file_is_refused_before_loading(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        torch.save({"w": torch.zeros(1)}, tmp_path / "real.pt")
        with zipfile.ZipFile(tmp_path / "real.pt") as real:
            for info in real.infolist():
                zf.writestr(info.filename, real.read(info))
        with zf.open("archive/data/99", "w") as f:  # 96 MB of zeros: ~100 KB deflated
            for _ in range(96):
                f.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="decompression bomb"):
        read_checkpoint(path)


def test_a_stride_0_tensor_claiming_10_to_the_12_values_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1).expand(10**6, 10**6)}, tmp_path / "stride0.pt")
    with pytest.raises(CheckpointError, match=r"claims 1,000,000,000,000 values") as err:
        read_checkpoint(tmp_path / "stride0.pt")
    assert "contiguous" in err.value.hint


@pytest.mark.parametrize("claimed", [10**6, 2**60])
def test_a_safetensors_header_that_lies_about_its_length_is_refused(tmp_path, claimed):
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    with pytest.raises(CheckpointError, match="header claims"):
        read_checkpoint(path)


def test_a_decompression_bomb_image_is_skipped_with_its_size_and_the_limit(tmp_path, monkeypatch):
    from kt_core.datasets.raw import check_image

    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # 144 MP, a few KB on disk
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    reason = check_image(tmp_path / "bomb.png")
    assert "144,000,000 pixels" in reason and "40,000,000" in reason and "KT_MAX_IMAGE_PIXELS" in reason
    monkeypatch.setenv("KT_MAX_IMAGE_PIXELS", "200000000")  # the administrator's choice is honoured
    assert check_image(tmp_path / "bomb.png") is None


def test_an_uploaded_zip_with_a_bomb_ratio_is_refused_whole(tmp_path):
    from kt_core.zipsafe import extract_zip

    with zipfile.ZipFile(tmp_path / "up.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/flat.bmp", bytes(8 << 20))  # 8 MB that deflates ~1000-fold
    with pytest.raises(DatasetError, match="decompression bomb"):
        extract_zip(tmp_path / "up.zip", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_zip_limits_and_their_validation_hold_when_the_dataset_is_cached(tmp_path, monkeypatch):
    from kt_core.config import DatasetConfig
    from kt_core.data import load_dataset
    from kt_core.errors import SettingsError

    with zipfile.ZipFile(tmp_path / "up.zip", "w") as zf:
        for cls in ("a", "b"):
            for i in range(4):
                image = tmp_path / f"{cls}{i}.png"
                Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(image)
                zf.write(image, f"{cls}/{i}.png")
    cfg = DatasetConfig(name="zip", root=str(tmp_path / "up.zip"), image_size=8, val_fraction=0.25)
    assert load_dataset(cfg).num_classes == 2  # extracted and cached
    monkeypatch.setenv("KT_ZIP_MAX_FILES", "5")
    with pytest.raises(DatasetError, match="more than the limit of 5"):
        load_dataset(cfg)
    monkeypatch.setenv("KT_ZIP_MAX_FILES", "200")
    monkeypatch.setenv("KT_ZIP_MAX_BYTES", "abc")
    with pytest.raises(SettingsError, match="KT_ZIP_MAX_BYTES='abc'"):
        load_dataset(cfg)
