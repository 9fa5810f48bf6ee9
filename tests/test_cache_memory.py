"""Building a cache holds it once (issue #18, section 4: memory against dataset size).

A dataset shaped into float tensors, a frozen backbone's features and a shared-outputs entry are
each as large as the data: a second copy held for a moment (per-chunk pieces concatenated at the
end, a clone before a save) doubles the peak, and with it the dataset size at which a run is
killed for memory. Each case runs in a fresh process and measures the peak RSS its call adds
(the kernel's high-water mark, reset through /proc/self/clear_refs) against the result's size.
B28 in bench/ measures the same at three dataset sizes through whole runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kt_core.datasets.containers import TensorSplit
from kt_core.image_cache import compute_once
from kt_core.shared_outputs import OutputStore

ROOT = Path(__file__).resolve().parents[1]

PEAK = """
import gc, json, sys, torch
torch.set_num_threads(1)

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

def added_peak(fn):
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = kb("VmRSS")
    result = fn()
    return (kb("VmHWM") - start) * 1024, result
"""


def _clear_refs_writable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _clear_refs_writable(),
                                reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")


def peak_over_result(body: str, tmp_path: Path) -> float:
    """Run PEAK + `body` (which sets `peak` and `result_bytes`) in a fresh process: peak / result."""
    done = subprocess.run([sys.executable, "-c", PEAK + body + "\nprint(json.dumps([peak, result_bytes]))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "KT_CACHE_DIR": str(tmp_path / "cache"),
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    peak, result_bytes = json.loads(done.stdout.strip().splitlines()[-1])
    return peak / result_bytes


def test_shaping_a_dataset_holds_the_float_tensor_once(tmp_path):
    ratio = peak_over_result("""
from kt_core.datasets.transforms import Geometry, fit_tensor
images = torch.randint(0, 256, (40000, 1, 28, 28), dtype=torch.uint8)  # 125 MB in float32
geometry = Geometry(channels=1, size=(28, 28), content=(28, 28))
peak, out = added_peak(lambda: fit_tensor(images, geometry))
result_bytes = out.numel() * out.element_size()
""", tmp_path)
    assert ratio < 1.3, f"shaping added {ratio:.2f}x its result at its peak (a second copy: ~2x)"


def test_computing_per_image_outputs_holds_them_once(tmp_path):
    ratio = peak_over_result("""
from torch import nn
from kt_core.datasets.containers import TensorSplit
from kt_core.image_cache import compute_once
split = TensorSplit(torch.randn(20000, 800), torch.zeros(20000, dtype=torch.long))
model = nn.Identity()
peak, out = added_peak(lambda: compute_once(model, lambda x: x * 2, split, torch.device("cpu"), 256, max_bytes=None))
result_bytes = out.numel() * out.element_size()
""", tmp_path)
    assert ratio < 1.3, f"the pass added {ratio:.2f}x its result at its peak (the batches and their concatenation: ~2x)"


def test_saving_a_shared_entry_does_not_copy_a_tensor_that_owns_its_memory(tmp_path):
    ratio = peak_over_result("""
from kt_core.shared_outputs import OutputStore
value = torch.randn(20000, 800)
peak, path = added_peak(lambda: OutputStore().save("k" * 32, value))
assert path is not None and torch.equal(torch.load(path, weights_only=True), value)
result_bytes = value.numel() * value.element_size()
""", tmp_path)
    assert ratio < 0.5, f"saving added {ratio:.2f}x the tensor at its peak (a clone: ~1x)"


def test_the_cached_outputs_equal_the_function_applied_batch_by_batch():
    split = TensorSplit(torch.randn(1000, 3, 4, 4), torch.zeros(1000, dtype=torch.long))
    weight = torch.randn(48, 7)
    fn = lambda x: x.flatten(1) @ weight  # noqa: E731
    out = compute_once(torch.nn.Identity(), fn, split, torch.device("cpu"), batch_size=96, max_bytes=None)
    assert out.shape == (1000, 7) and out.dtype == torch.float32
    assert torch.equal(out, torch.cat([fn(split.x[i:i + 96]) for i in range(0, 1000, 96)]))
    assert compute_once(torch.nn.Identity(), fn, split, torch.device("cpu"), 96, max_bytes=1000 * 7 * 4 - 1) is None
    assert compute_once(torch.nn.Identity(), fn, TensorSplit(split.x[:0], split.y[:0]), torch.device("cpu")) is None


def test_a_view_saved_as_a_shared_entry_keeps_only_its_own_rows(tmp_path):
    base = torch.randn(10000, 100)
    path = OutputStore(tmp_path).save("view", base[5000:5010])
    assert torch.equal(torch.load(path, weights_only=True), base[5000:5010])
    assert path.stat().st_size < 20_000  # 10 rows, not the 4 MB base
