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
