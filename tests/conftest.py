"""Shared pytest set-up: the Triton interpreter without a GPU, no network, the repo on sys.path.

TRITON_INTERPRET must be set before a Triton kernel is defined, so it is set here, at collection,
when there is no GPU. Run: python -m pytest -q
"""
import os
import sys

import torch  # noqa: E402  (importing torch does not import triton)

if not torch.cuda.is_available():  # on a GPU the kernel tests compile the kernels for real
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MDBIGAN_OFFLINE", "1")          # tests never try to download MNIST
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARED_MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                            "shared", "mnist")
