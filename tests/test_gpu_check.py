"""gpu_check.py: without a GPU it stops at once with a message; --dry-run runs every stage at tiny
size on the CPU and leaves every log and result in its folder; a pytest stage that ran no test
reads "skipped", not "ok".

    python -m pytest tests/test_gpu_check.py -q
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_cuda_it_stops_with_a_message(tmp_path):
    r = subprocess.run([sys.executable, "gpu_check.py", str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_runs_every_stage(tmp_path, mnist_dir):
    r = subprocess.run([sys.executable, "gpu_check.py", str(tmp_path), "--dry-run", "--mnist-dir",
                        mnist_dir], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    stages = [line.split("  ")[0].strip() for line in lines]
    assert stages == ["versions", "gpu tests", "kernel bench", "train bench", "train run", "eval run"]
    # the dry run hides any GPU, so every GPU test is skipped and the stage must not read "ok"
    assert "skipped (no tests ran)" in lines[1], lines
    assert all(" ok " in line for i, line in enumerate(lines) if i != 1), lines
    assert "step 4" in (tmp_path / "run" / "log.txt").read_text()
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["motion_nmi"] is not None
    assert "ms/step" in (tmp_path / "train_bench.log").read_text()
    assert (tmp_path / "profile.txt").stat().st_size > 0


SUMMARIES = [("6 skipped, 250 deselected in 3.12s", 0, True), ("==== 6 skipped in 1.20s ====", 0, True),
             ("no tests ran in 0.01s", 5, True), ("3 passed, 6 skipped, 1 warning in 3.1s", 0, False),
             ("1 failed, 6 skipped in 3.1s", 1, False), ("killed before its summary", 0, False)]


@pytest.mark.parametrize("last,rc,nothing", SUMMARIES, ids=[s[0].split(" in ")[0] for s in SUMMARIES])
def test_pytest_ran_nothing_reads_the_summary_line(tmp_path, last, rc, nothing):
    log = tmp_path / "tests.log"
    log.write_text(f"$ pytest -q -m gpu\nSKIPPED [6] tests/test_kernel.py:282: needs a CUDA GPU\n{last}\n")
    assert gpu_check.pytest_ran_nothing(rc, str(log)) is nothing
