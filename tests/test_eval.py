"""eval.py: metric functions on constructed inputs, and a full run on a tiny checkpoint.

    python -m pytest tests/test_eval.py -q
"""
import json
import re

import numpy as np
import pytest

import data
import eval as ev
import train


def test_clustering_metrics_known_answers():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 50)
    centres = rng.normal(size=(8, 5)) * 10
    feats = centres[labels] + rng.normal(size=(400, 5)) * 0.1
    nmi, ari, acc = ev.cluster_scores(feats, labels)
    assert 0.999 < nmi <= 1.0 and 0.999 < ari <= 1.0 and acc == 1.0
    nmi, ari, acc = ev.cluster_scores(feats, rng.permutation(labels))
    assert nmi < 0.1 and abs(ari) < 0.05 and acc < 0.3
    assert ev.cluster_acc(labels, (labels + 3) % 8) == 1.0      # renamed clusters are perfect


def test_centre_of_mass_and_motion_error():
    frames = np.zeros((2, 3, 10, 10))
    for t in range(3):
        frames[0, t, 2, 1 + t] = 1.0                             # a dot moving right
        frames[1, t, 2 + t, 1 + t] = 1.0                         # moving diagonally
    com = ev.centre_of_mass(frames)
    assert np.allclose(com[0], [[1, 2], [2, 2], [3, 2]])
    assert ev.motion_error(frames[:1], frames[1:]) == pytest.approx(np.mean([0, 1, 2]))


def test_probe_and_crops():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    groups = np.arange(400)
    feats = np.eye(4)[labels] + rng.normal(size=(400, 4)) * 0.1
    assert ev.probe(feats, labels, groups[rng.permutation(400)]) == 1.0
    assert ev.probe(rng.normal(size=(400, 4)), labels, groups[rng.permutation(400)]) < 0.45
    f = np.zeros((1, 32, 32))
    f[0, 20:24, 5:9] = 1
    c = ev.crops(f, 8)
    assert c.shape == (1, 8, 8) and c.sum() == 16               # the whole blob, centred


def test_motion_judge_is_accurate_on_real_videos(tmp_path, fake_mnist):
    fake_mnist(tmp_path, n=200)
    ds = data.MotionMNIST("all", str(tmp_path), size=32)
    v, m, _ = ds.render(np.arange(1600))
    from sklearn.linear_model import LogisticRegression
    f = ev.trajectory_features(v / 255.0)
    clf = LogisticRegression(max_iter=2000).fit(f[:800], m[:800])
    assert (clf.predict(f[800:]) == m[800:]).mean() > 0.98


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, mnist_dir):
    """A tiny checkpoint trained for 2 steps and evaluated: (eval folder, printed output)."""
    run = tmp_path_factory.mktemp("run")
    assert train.main(["--preset", "tiny", "--device", "cpu", "--out-dir", str(run),
                       "--mnist-dir", mnist_dir, "--max-steps", "2"]) == 0
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert ev.main([str(run), "--mnist-dir", mnist_dir, "--device", "cpu"]) == 0   # the folder
    return run / "eval", buf.getvalue()


FRACTIONS = ["motion_nmi", "motion_acc", "pixel_nmi", "probe_motion_acc", "probe_digit_acc",
             "recon_digit_acc", "sample_consistency", "swap_motion_acc", "swap_digit_acc"]


def test_eval_writes_every_metric(evaluated):
    m = json.loads((evaluated[0] / "metrics.json").read_text())
    for k in FRACTIONS + ["motion_ari", "recon_motion_err_px", "sample_confidence", "judge_confidence"]:
        assert k in m and m[k] is not None, k


def test_eval_metrics_are_in_range(evaluated):
    m = json.loads((evaluated[0] / "metrics.json").read_text())
    for k in FRACTIONS:
        assert 0 <= m[k] <= 1, k
    assert -1 <= m["motion_ari"] <= 1 and m["recon_motion_err_px"] >= 0
    for k in ["sample_confidence", "judge_confidence"]:   # a top probability of <= 10 classes
        assert 0.1 - 1e-9 <= m[k] <= 1, k


@pytest.mark.parametrize("name", ["fig4_pca.png", "fig4_tsne.png", "fig5_recon.png", "swap.png", "samples.png"])
def test_eval_writes_figures(evaluated, name):
    assert (evaluated[0] / name).read_bytes()[:4] == b"\x89PNG"


def test_eval_prints_how_to_read_each_number(evaluated):
    out = evaluated[1]
    assert re.search(r"motion_nmi +[\d.]+ +higher is better", out)
    assert str(evaluated[0]) in out.splitlines()[-1]             # ends by naming the folder


def test_missing_checkpoint(tmp_path, capsys):
    assert ev.main([str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert ev.main([str(tmp_path / "bad.pt")]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_checkpoint_from_before_the_redesign(tmp_path, capsys):
    import torch
    torch.save({"model": {}, "config": {"frames": 3}, "step": 0}, tmp_path / "old.pt")
    assert ev.main([str(tmp_path / "old.pt")]) == 2
    assert "older mdbigan.py" in capsys.readouterr().err


def test_unwritable_out_dir(evaluated, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert ev.main([str(evaluated[0].parent), "--out-dir", str(tmp_path / "file" / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err
