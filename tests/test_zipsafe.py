"""Uploaded zips are extracted safely or refused whole, and nothing ever lands outside dest."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from kt_core.config import DatasetConfig
from kt_core.data import load_dataset
from kt_core.errors import DatasetError
from kt_core.zipsafe import extract_zip


def png_bytes(colour=(200, 30, 30), size=10) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def everything_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """A folder holding only the zip; dest goes inside `out/`. Anything else appearing is a leak."""
    box = tmp_path / "box"
    (box / "out").mkdir(parents=True)
    return box


def test_extracts_images_and_skips_other_files(sandbox):
    archive = make_zip(sandbox / "ok.zip", {
        "cats/1.png": png_bytes(), "cats/2.png": png_bytes(), "dogs/1.png": png_bytes((0, 0, 200)),
        "README.txt": b"hello", "__MACOSX/cats/._1.png": b"\x00\x05\x16\x07", "dogs/": b"",
    })
    report = extract_zip(archive, sandbox / "out" / "data")
    assert report.extracted == 3 and report.skipped == 2
    assert "README.txt" in report.skipped_names
    assert everything_under(sandbox / "out" / "data") == {"cats", "cats/1.png", "cats/2.png", "dogs", "dogs/1.png"}
    assert report.total_bytes == sum(p.stat().st_size for p in (sandbox / "out" / "data").rglob("*.png"))


def test_file_object_works(sandbox):
    data = make_zip(sandbox / "ok.zip", {"a/1.png": png_bytes(), "b/1.png": png_bytes()}).read_bytes()
    report = extract_zip(io.BytesIO(data), sandbox / "out" / "data")
    assert report.extracted == 2


@pytest.mark.parametrize("evil, message", [
    ("../escaped.png", "climbs out"),
    ("cats/../../escaped.png", "climbs out"),
    ("..\\escaped.png", "climbs out"),
    ("/tmp/kt_zipsafe_absolute.png", "absolute path"),
    ("C:/escaped.png", "absolute path"),
    ("C:\\Windows\\escaped.png", "absolute path"),
])
def test_path_traversal_refused_and_nothing_written(sandbox, evil, message):
    archive = make_zip(sandbox / "evil.zip", {"cats/1.png": png_bytes(), "dogs/1.png": png_bytes(), evil: png_bytes()})
    before = everything_under(sandbox.parent)
    with pytest.raises(DatasetError, match=message):
        extract_zip(archive, sandbox / "out" / "data")
    assert everything_under(sandbox.parent) == before  # no dest, no staging folder, no escaped file
    assert not Path("/tmp/kt_zipsafe_absolute.png").exists()


def test_symlink_entry_refused(sandbox):
    archive = sandbox / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/1.png", png_bytes())
        link = zipfile.ZipInfo("cats/passwd.png")
        link.create_system = 3  # Unix
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link"):
        extract_zip(archive, sandbox / "out" / "data")
    assert everything_under(sandbox / "out") == set()


def test_declared_size_over_limit_refused(sandbox):
    archive = make_zip(sandbox / "big.zip", {"a/1.png": png_bytes(size=64), "b/1.png": png_bytes(size=64)})
    with pytest.raises(DatasetError, match="more than the limit"):
        extract_zip(archive, sandbox / "out" / "data", max_total_bytes=200)
    assert everything_under(sandbox / "out") == set()


def test_headers_that_lie_about_size_are_refused(sandbox):
    """A zip bomb declares small sizes; the bytes actually written are counted and checked."""
    payload = b"\x89PNG" + b"\x00" * 50_000  # compresses to almost nothing
    archive = make_zip(sandbox / "bomb.zip", {"a/1.png": png_bytes(), "b/bomb.png": payload})
    raw = bytearray(archive.read_bytes())
    name = b"b/bomb.png"
    # the declared uncompressed size: offset 22 of the local header, 24 of the central entry
    local = raw.find(name) - 30
    central = raw.find(name, local + 30 + len(name)) - 46
    assert raw[local:local + 4] == b"PK\x03\x04" and raw[central:central + 4] == b"PK\x01\x02"
    raw[local + 22:local + 26] = (100).to_bytes(4, "little")
    raw[central + 24:central + 28] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="bomb|damaged"):
        extract_zip(archive, sandbox / "out" / "data", max_total_bytes=1000)
    assert everything_under(sandbox / "out") == set()


def test_too_many_files_refused(sandbox):
    archive = make_zip(sandbox / "many.zip", {f"c{i % 2}/{i}.png": png_bytes() for i in range(6)})
    with pytest.raises(DatasetError, match="more than the limit of 5"):
        extract_zip(archive, sandbox / "out" / "data", max_files=5)
    assert everything_under(sandbox / "out") == set()


def test_zip_without_images_refused(sandbox):
    archive = make_zip(sandbox / "docs.zip", {"a/readme.txt": b"x", "b/notes.md": b"y"})
    with pytest.raises(DatasetError, match="no image files"):
        extract_zip(archive, sandbox / "out" / "data")


def test_not_a_zip_refused(sandbox):
    (sandbox / "fake.zip").write_bytes(b"this is not a zip")
    with pytest.raises(DatasetError, match="not a readable zip"):
        extract_zip(sandbox / "fake.zip", sandbox / "out" / "data")


def test_zip_dataset_loads_through_the_cache_folder(tmp_path):
    archive = make_zip(tmp_path / "upload.zip", {
        f"pets/{cls}/{i}.png": png_bytes(colour, size=12)
        for cls, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))) for i in range(5)
    } | {"pets/notes.txt": b"skip me"})
    data = load_dataset(DatasetConfig(name="zip", root=str(archive), val_fraction=0.2))
    assert data.class_names == ["cat", "dog"]  # the wrapping pets/ folder is stepped into
    assert data.counts() == {"train": [3, 3], "val": [1, 1], "test": [1, 1]}
    assert any("non-image" in w for w in data.warnings)
    assert data.input_size == (3, 12, 12)


def test_zip_with_one_class_refused(tmp_path):
    archive = make_zip(tmp_path / "one.zip", {f"cat/{i}.png": png_bytes() for i in range(4)})
    with pytest.raises(DatasetError, match="at least two classes"):
        load_dataset(DatasetConfig(name="zip", root=str(archive)))


def test_the_servers_zip_limits_bind_and_a_dataset_option_can_only_lower_them(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "pets.zip", {f"{cls}/{i}.png": png_bytes(size=12)
                                               for cls in ("cat", "dog") for i in range(3)})
    monkeypatch.setenv("KT_ZIP_MAX_FILES", "4")  # an administrator's cap: 6 entries are too many
    with pytest.raises(DatasetError, match="more than the limit of 4"):
        load_dataset(DatasetConfig(name="zip", root=str(archive)))
    with pytest.raises(DatasetError, match="outside this server's limit") as raised:
        load_dataset(DatasetConfig(name="zip", root=str(archive), options={"max_files": 1000}))
    assert "KT_ZIP_MAX_FILES" in raised.value.hint
    monkeypatch.setenv("KT_ZIP_MAX_FILES", "100")
    with pytest.raises(DatasetError, match="more than the limit of 5"):  # the option lowers the cap
        load_dataset(DatasetConfig(name="zip", root=str(archive), options={"max_files": 5}))
    assert load_dataset(DatasetConfig(name="zip", root=str(archive))).class_names == ["cat", "dog"]
    # Already extracted: the zip is held to the limits in force now all the same.
    monkeypatch.setenv("KT_ZIP_MAX_FILES", "4")
    with pytest.raises(DatasetError, match=r"limit of 4\b"):
        load_dataset(DatasetConfig(name="zip", root=str(archive), val_fraction=0.34))
    for bad in ("abc", True, 2.5, 0):
        with pytest.raises(DatasetError, match="max_files"):
            load_dataset(DatasetConfig(name="zip", root=str(archive), options={"max_files": bad}))
    monkeypatch.setenv("KT_ZIP_MAX_FILES", "100")
    monkeypatch.setenv("KT_ZIP_MAX_BYTES", "lots")  # read at the next extraction: a new zip
    other = make_zip(tmp_path / "other.zip", {f"{cls}/{i}.png": png_bytes(size=14) for cls in "ab" for i in range(2)})
    from kt_core.errors import SettingsError
    with pytest.raises(SettingsError, match="KT_ZIP_MAX_BYTES"):
        load_dataset(DatasetConfig(name="zip", root=str(other)))
