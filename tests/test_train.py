"""train.py: a tiny run writes a checkpoint and a log; resume is exact; errors are clear; DDP.

    python -m pytest tests/test_train.py -q
"""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

import train
from mdbigan import MDBiGAN
from test_data import fake_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    fake_mnist(folder, n=60)
    return str(folder)


def run(out, mnist, *extra):
    return train.main(["--preset", "tiny", "--device", "cpu", "--out-dir", str(out),
                       "--mnist-dir", mnist, "--log-every", "1", *extra])


def test_tiny_run_writes_checkpoint_and_log(tmp_path, mnist):
    assert run(tmp_path, mnist, "--max-steps", "3") == 0
    ck = train.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ck["step"] == 3 and ck["config"]["size"] == 16
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 3 and re.match(r"step 3 \| d_i [\d.]+ \| d_v [\d.]+ \| g -?[\d.]+ .*videos/s", lines[-1])
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert (tmp_path / "losses.png").exists() and list(tmp_path.glob("samples_*.png"))


def test_resume_gives_identical_weights(tmp_path, mnist):
    assert run(tmp_path / "a", mnist, "--max-steps", "4") == 0
    assert run(tmp_path / "b", mnist, "--max-steps", "2") == 0
    assert run(tmp_path / "b", mnist, "--max-steps", "4", "--resume") == 0
    a = train.load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))
    b = train.load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))
    assert b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_bad_flags_and_folders(tmp_path, mnist, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, mnist, "--bogus")
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        run(tmp_path, mnist, "--max-steps", "0")
    assert e.value.code == 2 and "--max-steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(tmp_path, mnist, "--set", "loss=wasserstein")
    (tmp_path / "file").write_text("x")
    assert run(tmp_path / "file" / "sub", mnist, "--max-steps", "1") == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, mnist, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert run(tmp_path, mnist, "--resume") == 2
    assert "corrupt" in capsys.readouterr().err
    assert run(tmp_path / "none", mnist, "--resume") == 2


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, mnist, monkeypatch, capsys):
    assert run(tmp_path, mnist, "--max-steps", "2") == 0
    good = (tmp_path / "ckpt.pt").read_bytes()
    orig = MDBiGAN.eg_loss
    monkeypatch.setattr(MDBiGAN, "eg_loss", lambda self, v: (orig(self, v)[0] * float("nan"), {}))
    assert run(tmp_path, mnist, "--max-steps", "4", "--resume") == 3
    assert "NaN" in capsys.readouterr().err
    assert (tmp_path / "ckpt.pt").read_bytes() == good


def test_sigint_saves_a_checkpoint(tmp_path, mnist, monkeypatch):
    orig, calls = MDBiGAN.d_loss, []

    def d_loss(self, v):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return orig(self, v)
    monkeypatch.setattr(MDBiGAN, "d_loss", d_loss)
    assert run(tmp_path, mnist, "--max-steps", "50") == 128 + signal.SIGINT
    assert train.load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 2


def test_torchrun_two_gloo_ranks(tmp_path, mnist):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--preset", "tiny", "--device", "cpu", "--max-steps", "3",
           "--out-dir", str(tmp_path), "--mnist-dir", mnist]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"ddp check: weight digests \[(.*)\] \((\w+)\); first video of each rank \[(\d+), (\d+)\]", r.stdout)
    assert m, r.stdout
    assert m.group(2) == "identical"
    a, b = int(m.group(3)), int(m.group(4))
    assert a % 2 == 0 and b % 2 == 1                                 # each rank its own shard
    ck = train.load_checkpoint(str(tmp_path / "ckpt.pt"))
    torch.manual_seed(0)
    init = MDBiGAN(train.Config.from_dict(ck["config"])).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in ck["model"].items() if v.is_floating_point())
    assert os.listdir(tmp_path).count("ckpt.pt") == 1
