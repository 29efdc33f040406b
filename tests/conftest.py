"""Shared pytest set-up and fixtures: the Triton interpreter without a GPU, no network, the repo on
sys.path, fake MNIST files, real MNIST where $MDBIGAN_MNIST_DIR points to it, the tiny preset.

TRITON_INTERPRET must be set before a Triton kernel is defined, so it is set here, at collection,
when there is no GPU. Run: python -m pytest -q   (MDBIGAN_MNIST_DIR=DIR adds the real-MNIST tests)
"""
import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch  # noqa: E402  (importing torch does not import triton)

if not torch.cuda.is_available():  # on a GPU the kernel tests compile the kernels for real
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MDBIGAN_OFFLINE", "1")          # tests never try to download MNIST
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402

TINY = train.PRESETS["tiny"].config            # the one tiny model: tests vary it with replace()
SMALL = train.PRESETS["structured32"].config   # the CPU preset's model, 32x32


def write_idx(path, arr, magic, gz=True):
    """Writes an IDX file (as MNIST ships them); returns the uncompressed bytes."""
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    blob = head + arr.astype(np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(blob) if gz else blob)
    return blob


def _fake_mnist(folder, n=50, gz=True):
    rng = np.random.default_rng(0)
    imgs = np.zeros((n, 28, 28), np.uint8)
    imgs[:, 8:20, 10:18] = rng.integers(100, 256, (n, 12, 8))   # a bright block as the "digit"
    labels = np.arange(n) % 10
    sfx = ".gz" if gz else ""
    write_idx(os.path.join(folder, "t10k-images-idx3-ubyte" + sfx), imgs, 2051, gz)
    write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte" + sfx), labels, 2049, gz)
    return imgs, labels


@pytest.fixture(scope="session")
def fake_mnist():
    """fake_mnist(folder, n=50, gz=True) writes MNIST-format files of n block "digits"."""
    return _fake_mnist


@pytest.fixture(scope="session")
def idx_writer():
    """write_idx(path, array, magic, gz=True)."""
    return write_idx


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A folder of 100 fake MNIST digits (10 held out), made once per pytest run."""
    folder = tmp_path_factory.mktemp("mnist")
    _fake_mnist(folder, n=100)
    return str(folder)


@pytest.fixture(scope="session")
def real_mnist_dir():
    """The real MNIST test-set files, found as data.py finds them ($MDBIGAN_MNIST_DIR); skips without."""
    folder = os.environ.get("MDBIGAN_MNIST_DIR", "")
    if not os.path.isdir(folder):
        pytest.skip("real MNIST: set MDBIGAN_MNIST_DIR to a folder with the MNIST test-set files")
    return folder


def run_copied_alone(src, tmp_path, script, **env):
    """Runs `script` in a fresh Python in tmp_path, where the file src is copied alone and nothing
    else of this repository is importable (no PYTHONPATH): the copy promise. Returns the
    completed process; env adds environment variables."""
    shutil.copy(src, tmp_path)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env}
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
