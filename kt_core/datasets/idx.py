"""The IDX format of MNIST and its family (Fashion-MNIST, KMNIST, EMNIST).

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of dimensions), one
big-endian uint32 per dimension, then the values in row-major order. Files are often gzipped.
We read them ourselves because torchvision's MNIST refuses a folder that lacks any of its four
raw files, and a folder with only the test set is exactly what many users have.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError

log = logging.getLogger(__name__)

# dtype code -> big-endian numpy dtype (IDX stores multi-byte values big-endian)
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read one IDX file (gzipped or not) into a tensor of the stored dtype and shape.

    MNIST images come back as uint8 `(N, 28, 28)`, labels as uint8 `(N,)`: call `.long()` on
    labels and `.float() / 255` on images before use.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DatasetError(f"IDX file {path} does not exist", "check the path and the file name") from None
    except (OSError, EOFError) as exc:  # gzip raises these on a truncated or corrupt stream
        raise DatasetError(f"cannot read IDX file {path}: {exc}", "the file is damaged; download it again") from None

    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path.name} is not an IDX file (bad magic number)",
                           "give MNIST-style *-images-idx3-ubyte / *-labels-idx1-ubyte files")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path.name} is truncated inside its header", "the file is damaged; download it again")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path.name} holds {len(data) - header} bytes of values but its header promises {expected} {shape}",
            "the file is truncated or damaged; download it again")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # native byte order: torch has no big-endian tensors
    array = array.astype(dtype.newbyteorder("="), copy=True)
    log.debug("read %s: %s %s", path.name, array.dtype, shape)
    return torch.from_numpy(array)
