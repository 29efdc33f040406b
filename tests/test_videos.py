"""Your own videos: train.py --data FILE.npz, data.py --export, eval.py on a file's run; bad
input refused in one line; runs refused, replaced and resumed; long codes; colour in both
families; the inference file model.pt.

    python -m pytest tests/test_videos.py -q

Every test here runs on one OpenMP thread (torch's and scikit-learn's): on a 2-core CPU busy with
other work, two threads spin at each barrier, and a tiny run took 7 s instead of 0.6 s, the t-SNE
of eval.py 30 s instead of 0.2 s. Nothing asserted depends on the thread count.
"""
import json
import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import data
import eval as ev
import train
from conftest import TINY
from mdbigan import MDBiGAN, load_checkpoint

LABEL_FREE = {"recon_mse", "recon_psnr", "cycle_motion_err", "cycle_content_err"}


def write_videos(path, shape, seed=0, **labels):
    """An .npz of random uint8 videos of `shape` and the given label arrays; returns its path."""
    videos = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    np.savez(path, videos=videos, **labels)
    return str(path)


def train_on(out, *extra, steps=2):
    return train.main(["--preset", "tiny", "--device", "cpu", "--max-steps", str(steps),
                       "--out-dir", str(out), *extra])


def evaluate(ckpt, judges, *extra):
    return ev.main([str(ckpt), "--device", "cpu", "--judge-frames", "256", "--judge-videos", "64", "--judge-dir", str(judges),
                    *extra])


def metrics(folder):
    m = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in ("meta", "guide")}, m["meta"]


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def gif_frames(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.n_frames


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One OpenMP thread for this file's tests (see the module's docstring), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="openmp"):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    return tmp_path_factory.mktemp("judges")


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """A tiny run of 2 steps on 12 grey videos of 4 frames, 16x16: (run folder, its file)."""
    root = tmp_path_factory.mktemp("file_run")
    f = write_videos(root / "a.npz", (12, 4, 16, 16), seed=1)
    assert train_on(root / "run", "--data", f) == 0
    return root / "run", f


# ----------------------------------------------------------------------------- training on a file

@pytest.mark.parametrize("shape", [
    pytest.param((12, 5, 20, 28), id="grey-NTHW-20x28"),
    pytest.param((30, 6, 24, 20, 3), id="colour-NTHWC-24x20"),
    pytest.param((19, 3, 17, 17, 1), id="grey-NTHW1-17x17"),
])
def test_a_file_sets_frames_and_channels_and_holds_out_a_tenth(tmp_path, shape):
    N, T = shape[:2]
    C = shape[4] if len(shape) == 5 else 1
    f = write_videos(tmp_path / "v.npz", shape)
    assert train_on(tmp_path / "run", "--data", f) == 0
    ck = train.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert ck["step"] == 2
    cfg = ck["config"]
    assert (cfg["frames"], cfg["channels"], cfg["size"]) == (T, C, TINY.size)
    spec = ck["args"]["data"]
    held = spec["holdout"]
    assert len(held) == max(1, round(0.1 * N)) and len(set(held)) == len(held)
    assert all(0 <= i < N for i in held) and held == data.holdout_items(N).tolist()
    train_split = data.open_dataset(spec, "train", cfg["size"], log=lambda *a: None)
    assert len(train_split) == N - len(held) and not set(train_split.items) & set(held)
    assert train_split.clips([0])[0].shape == (1, T, C, TINY.size, TINY.size)


@pytest.mark.parametrize("hw", [(20, 28), (28, 20)], ids=["wide", "tall"])
def test_frames_are_centre_cropped(hw):
    """The square kept is the middle one: a border of 255 outside it never reaches the frame."""
    H, W = hw
    v = np.full((2, 3, H, W, 1), 255, np.uint8)
    top, left = (H - 20) // 2, (W - 20) // 2
    v[:, :, top:top + 20, left:left + 20] = 7
    for size in (20, 16, 24):                                    # as is, shrunk, enlarged
        out = data.square(v, size)
        assert out.shape == (2, 3, 1, size, size) and (out == 7).all(), size


def test_colour_channels_keep_their_order():
    v = np.zeros((1, 2, 16, 16, 3), np.uint8)
    v[..., 0], v[..., 2] = 200, 50                               # red and a little blue
    out = data.square(v, 16)
    assert out.shape == (1, 2, 3, 16, 16)
    assert (out[:, :, 0] == 200).all() and (out[:, :, 1] == 0).all() and (out[:, :, 2] == 50).all()


def test_frames_option_trains_on_windows(tmp_path):
    """--frames 3 of a file of 6: the model is 3 frames long and its batches are whole windows
    of consecutive frames of the file's videos."""
    N, T = 12, 6
    v = np.zeros((N, T, 16, 16), np.uint8)
    v += (20 * np.arange(T, dtype=np.uint8))[None, :, None, None]          # frame t: 20 t + video
    v += (np.arange(N, dtype=np.uint8))[:, None, None, None]
    np.savez(tmp_path / "v.npz", videos=v)
    assert train_on(tmp_path / "run", "--data", str(tmp_path / "v.npz"), "--frames", "3") == 0
    ck = train.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert ck["config"]["frames"] == 3 and ck["args"]["frames"] == 3 and ck["step"] == 2
    assert ck["args"]["data"]["frames"] == 3
    ds = data.open_dataset(ck["args"]["data"], "train", 16, log=lambda *a: None)
    starts = set()
    for step in range(8):
        batch = train.get_batch(ds, 0, 0, 1, step, 4)            # (4, 3, 1, 16, 16)
        assert batch.shape == (4, 3, 1, 16, 16)
        px = batch[:, :, 0, 0, 0].astype(int)
        assert (np.diff(px, axis=1) == 20).all()                 # consecutive frames of one video
        starts |= set(px[:, 0] // 20)
    assert starts == {0, 1, 2, 3}                                # every window start is drawn


# ----------------------------------------------------------------------------- export and evaluate

@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
def test_export_train_evaluate(tmp_path, mnist_dir, judges, colour):
    """data.py --export writes the file format; a run on it evaluates with every metric its
    labels allow (800 videos: 80 held out, enough for the probes' halves)."""
    f = str(tmp_path / "digits.npz")
    assert data.main(["--export", f, "--count", "800", "--split", "all", "--size", "16",
                      "--frames", "4", "--mnist-dir", mnist_dir, *(["--colour"] if colour else [])]) == 0
    with np.load(f) as z:
        videos, names = z["videos"], set(z.files) - {"videos"}
        assert videos.dtype == np.uint8
        assert videos.shape == ((800, 4, 16, 16, 3) if colour else (800, 4, 16, 16))
        assert names == ({"content", "motion", "hue"} if colour else {"content", "motion"})
        assert set(np.unique(z["motion"])) == set(range(8)) and z["content"].max() <= 9
        if colour:
            assert set(np.unique(z["hue"])) <= set(range(6)) and len(np.unique(z["hue"])) > 1
    assert train_on(tmp_path / "run", "--data", f) == 0
    ck = load_checkpoint(str(tmp_path / "run"))
    assert ck["config"]["channels"] == (3 if colour else 1)
    assert evaluate(tmp_path / "run", judges, "--long", "8") == 0
    m, meta = metrics(tmp_path / "run" / "eval")
    assert meta["videos"] == len(ck["args"]["data"]["holdout"]) == 80     # the run's held-out split
    want = LABEL_FREE | {"probe_content_acc", "probe_content_acc_mlp", "probe_motion_acc", "motion_nmi",
                         "recon_content_acc", "swap_content_acc", "sample_consistency", "long_consistency"}
    want |= {"probe_hue_acc", "probe_hue_acc_mlp"} if colour else set()
    assert want <= set(m), want - set(m)
    assert not {"probe_digit_acc", "long_paths_in_range"} & set(m)   # MotionMNIST's names only
    for k in want - LABEL_FREE:
        assert 0 <= m[k] <= 1, k
    assert m["recon_mse"] > 0 and meta["channels"] == (3 if colour else 1) and f in meta["data"]
    assert gif_frames(tmp_path / "run" / "eval" / "long.gif") == 8
    assert gif_frames(tmp_path / "run" / "eval" / "samples.gif") == 4


def test_a_files_own_split_is_trained_on_and_evaluated_on(tmp_path, judges):
    """`split` (0 train, 1 test) replaces the seeded 10%: the run trains on the 0s, stores the 1s
    as its held-out videos, and eval.py evaluates exactly those; `split` itself is no label."""
    split = (np.arange(40) % 4 == 3).astype(np.int64)           # 10 test videos, not the seeded ones
    f = write_videos(tmp_path / "v.npz", (40, 4, 16, 16), split=split, motion=np.arange(40) % 8)
    train_set = data.VideoFile(f, "train", 16, log=lambda *a: None)
    test_set = data.VideoFile(f, "test", 16, log=lambda *a: None)
    assert test_set.items.tolist() == np.flatnonzero(split).tolist()
    assert train_set.items.tolist() == np.flatnonzero(split == 0).tolist()
    assert "split" not in train_set.labels and train_set.label_names == ("motion",)
    assert train_on(tmp_path / "run", "--data", f) == 0
    ck = load_checkpoint(str(tmp_path / "run"))
    assert ck["args"]["data"]["holdout"] == np.flatnonzero(split).tolist()
    assert evaluate(tmp_path / "run", judges) == 0
    m, meta = metrics(tmp_path / "run" / "eval")
    assert meta["videos"] == 10 and not [k for k in m if "split" in k]


def test_an_identity_label_groups_the_probes_and_is_not_judged(tmp_path):
    """A label of over 100 classes (a character) is not probed or judged; it groups the probes,
    so that one character's videos sit on one side of a probe's halves."""
    character = np.repeat(np.arange(120), 3)
    f = write_videos(tmp_path / "v.npz", (360, 2, 16, 16), character=character, body=character % 6,
                     motion=np.arange(360) % 3)
    ds = data.VideoFile(f, "all", 16, log=lambda *a: None)
    assert set(ds.label_names) == {"body", "motion"}
    assert ds.groups(np.arange(360)).tolist() == character.tolist()
    assert data.identity_labels({"clip": np.arange(50), "motion": np.arange(50) % 2}) == ("clip",)


def test_unlabelled_file_gets_the_label_free_metrics(tmp_path, judges):
    f = write_videos(tmp_path / "v.npz", (130, 4, 16, 16))       # 13 held out: every figure fills
    assert train_on(tmp_path / "run", "--data", f) == 0
    assert evaluate(tmp_path / "run", judges) == 0
    m, meta = metrics(tmp_path / "run" / "eval")
    assert LABEL_FREE <= set(m)
    assert not [k for k in m if k.startswith("probe_") or k.endswith("_acc")]
    assert meta["content_judge"] is None


SMALL_SETS = [
    pytest.param(("--count", "16"), id="export-16-videos"),                  # 2 held out
    pytest.param(("--count", "200", "--split", "all"), id="export-200-videos"),   # 20 held out
    pytest.param(None, id="motion-labels-100-videos"),                       # fewer than 12 generated
]


@pytest.mark.parametrize("case", SMALL_SETS)
def test_eval_of_a_small_file_runs_or_refuses_in_one_line(tmp_path, mnist_dir, judges, capsys, case):
    """train.py takes any file of >= 2 videos; eval.py on its run either evaluates it or says in
    one line why it cannot (exit 2), never a traceback."""
    f = str(tmp_path / "v.npz")
    if case is None:                                             # 10 held out, motion labels only
        write_videos(f, (100, 4, 16, 16), motion=np.arange(100) % 8)
    else:                                                        # 2 or 20 held out
        assert data.main(["--export", f, *case, "--size", "16", "--frames", "4",
                          "--mnist-dir", mnist_dir]) == 0
    assert train_on(tmp_path / "run", "--data", f) == 0
    capsys.readouterr()
    code = evaluate(tmp_path / "run", judges)
    if code == 2:
        one_line(capsys.readouterr().err)
    else:
        assert code == 0 and LABEL_FREE <= set(metrics(tmp_path / "run" / "eval")[0])


def test_eval_with_few_max_videos_runs_or_refuses_in_one_line(mnist_run, judges, tmp_path, capsys):
    code = evaluate(mnist_run[0], judges, "--max-videos", "8", "--out-dir", str(tmp_path / "ev"))
    if code == 2:
        one_line(capsys.readouterr().err)
    else:
        assert code == 0 and LABEL_FREE <= set(metrics(tmp_path / "ev")[0])


# ----------------------------------------------------------------------------- bad input

def save_npy(path):
    """A plain np.save file under the .npz name (np.save would add .npy to the name itself)."""
    with open(path, "wb") as f:
        np.save(f, np.zeros((4, 4, 16, 16), np.uint8))


def videos(*shape, dtype=np.uint8):
    return np.zeros(shape, dtype)


# case: (write the file at path p, extra flags, a phrase the one line on stderr must hold)
BAD = {
    "missing": (lambda p: None, (), "no such file"),
    "random-bytes": (lambda p: Path(p).write_bytes(np.random.default_rng(0).bytes(300)), (),
                     "not a readable .npz file"),
    "npy": (save_npy, (), "a single array, not an .npz"),
    "no-videos": (lambda p: np.savez(p, frames=videos(4, 4, 16, 16)), (), "no 'videos' array"),
    "float32": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16, dtype=np.float32)), (), "expected uint8"),
    "3-D": (lambda p: np.savez(p, videos=videos(4, 16, 16)), (), "expected [N, T, H, W]"),
    "2-channels": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16, 2)), (), "2 channels"),
    "1-video": (lambda p: np.savez(p, videos=videos(1, 4, 16, 16)), (), "1 videos of 4 frames"),
    "1-frame": (lambda p: np.savez(p, videos=videos(4, 1, 16, 16)), (), "4 videos of 1 frames"),
    "12px": (lambda p: np.savez(p, videos=videos(4, 4, 12, 20)), (), "12x20 px, at least 16x16"),
    "labels-length": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16), content=np.arange(5)), (),
                      "labels 'content' have shape [5], expected [4]"),
    "labels-float": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16), hue=np.zeros(4)), (),
                     "labels 'hue' are float64, expected integers"),
    "frames-past-T": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16)), ("--frames", "9"),
                      "windows of 9 frames asked for, the videos have 4"),
    "split-not-0-1": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16), split=np.array([0, 1, 2, 0])),
                      (), "'split' holds [0, 1, 2]; it must be 0 (train) or 1 (test)"),
    "split-no-test": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16), split=np.zeros(4, int)), (),
                      "'split' puts no video in the test split"),
    "split-no-train": (lambda p: np.savez(p, videos=videos(4, 4, 16, 16), split=np.ones(4, int)), (),
                       "'split' puts every video in the test split"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    write, flags, phrase = BAD[case]
    path = tmp_path / "v.npz"
    write(str(path))
    out = tmp_path / "run"
    assert train_on(out, "--data", str(path), *flags) == 2
    line = one_line(capsys.readouterr().err)
    assert phrase in line and line.startswith("error: ")
    assert not out.exists() or not any(out.iterdir())            # no checkpoint, log or picture


def test_resume_refuses_other_videos(file_run, tmp_path, capsys):
    run, f = file_run
    before = {n: (run / n).read_bytes() for n in ("ckpt.pt", "log.txt")}
    other = write_videos(tmp_path / "b.npz", (12, 4, 16, 16), seed=2)   # same shape, other videos
    capsys.readouterr()
    assert train.main(["--resume", "--out-dir", str(run), "--device", "cpu", "--data", other,
                       "--max-steps", "4"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "different" in line and "--data" in line
    assert {n: (run / n).read_bytes() for n in before} == before


def test_resume_finds_a_moved_file_by_its_fingerprint(tmp_path):
    f = write_videos(tmp_path / "a.npz", (12, 4, 16, 16), seed=1)
    assert train_on(tmp_path / "run", "--data", f) == 0
    spec = load_checkpoint(str(tmp_path / "run"))["args"]["data"]
    moved = shutil.move(f, tmp_path / "moved.npz")
    assert train.main(["--resume", "--out-dir", str(tmp_path / "run"), "--device", "cpu",
                       "--data", str(moved), "--max-steps", "3"]) == 0
    ck = load_checkpoint(str(tmp_path / "run"))
    assert ck["step"] == 3 and ck["args"]["data"] == {**spec, "path": os.path.abspath(moved)}


@pytest.mark.parametrize("case", ["other-videos", "mnist-dir", "missing-file"])
def test_eval_refuses_other_data_in_one_line(file_run, tmp_path, judges, capsys, case):
    run, _ = file_run
    flags, phrase = {
        "other-videos": (("--data", write_videos(tmp_path / "b.npz", (12, 4, 16, 16), seed=2)),
                         "pass --data FILE with the same videos"),
        "mnist-dir": (("--mnist-dir", str(tmp_path)), "use --data to say where it is"),
        "missing-file": (("--data", str(tmp_path / "gone.npz")), "no such file"),
    }[case]
    assert evaluate(run, judges, "--out-dir", str(tmp_path / "ev"), *flags) == 2
    assert phrase in one_line(capsys.readouterr().err)
    assert not (tmp_path / "ev").exists()


# ----------------------------------------------------------------------------- the run folder

def test_new_run_into_a_run_is_refused_and_overwrite_starts_afresh(tmp_path, capsys):
    f = write_videos(tmp_path / "v.npz", (12, 4, 16, 16))
    run = tmp_path / "run"
    assert train_on(run, "--data", f, "--log-every", "1", steps=3) == 0
    assert len((run / "log.txt").read_text().splitlines()) == 3 and (run / "samples_000003.png").exists()
    before = {n: (run / n).read_bytes() for n in ("ckpt.pt", "log.txt", "log.jsonl")}
    capsys.readouterr()
    assert train_on(run, "--data", f, "--log-every", "1") == 2
    line = one_line(capsys.readouterr().err)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert {n: (run / n).read_bytes() for n in before} == before
    assert train_on(run, "--data", f, "--log-every", "1", "--overwrite") == 0
    lines = (run / "log.txt").read_text().splitlines()
    assert [s.split(" |")[0] for s in lines] == ["step 1", "step 2"]
    assert [json.loads(s)["step"] for s in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert not (run / "samples_000003.png").exists() and (run / "samples_000002.png").exists()
    assert load_checkpoint(str(run))["step"] == 2


def test_resume_at_max_steps_does_nothing(file_run, capsys):
    run, _ = file_run
    before = {n: (run / n).read_bytes() for n in ("ckpt.pt", "model.pt", "log.txt")}
    capsys.readouterr()
    assert train.main(["--resume", "--out-dir", str(run), "--device", "cpu", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "at step 2" in out and "nothing to do" in out
    assert {n: (run / n).read_bytes() for n in before} == before


# ----------------------------------------------------------------------------- MotionMNIST runs

@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mnist_dir):
    """A tiny MotionMNIST run trained with --mnist-dir on its own copy of the fake digits."""
    root = tmp_path_factory.mktemp("mnist_run")
    digits = shutil.copytree(mnist_dir, root / "digits")
    assert train_on(root / "run", "--mnist-dir", str(digits)) == 0
    return root / "run", digits


@pytest.fixture
def no_mnist_found(monkeypatch, tmp_path):
    """No MNIST anywhere but where a run says: no $MDBIGAN_MNIST_DIR, an empty cache, offline."""
    monkeypatch.delenv("MDBIGAN_MNIST_DIR", raising=False)
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MDBIGAN_OFFLINE", "1")


@pytest.fixture(scope="module")
def mnist_eval(mnist_run, judges, tmp_path_factory):
    """eval.py on mnist_run's folder without --mnist-dir: (exit code, metrics, meta, warnings)."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.delenv("MDBIGAN_MNIST_DIR", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("empty_cache")))
        mp.setenv("MDBIGAN_OFFLINE", "1")
        code = evaluate(mnist_run[0], judges)
    m, meta = metrics(mnist_run[0] / "eval") if code == 0 else ({}, {})
    return code, m, meta, [str(w.message) for w in caught]


def test_eval_finds_the_runs_own_digits(mnist_run, mnist_eval):
    code, m, meta, caught = mnist_eval
    assert code == 0
    assert str(mnist_run[1]) in meta["data"] and "sklearn" not in meta["data"]
    assert not [w for w in caught if "scikit-learn" in w]
    assert {"probe_digit_acc", "probe_digit_acc_mlp", "motion_nmi"} <= set(m)


def test_eval_of_a_run_whose_digits_moved_asks_for_mnist_dir(mnist_run, no_mnist_found, judges,
                                                              tmp_path, capsys):
    run, digits = mnist_run
    away = shutil.move(digits, tmp_path / "elsewhere")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                      # the stand-in digits' warning
            assert evaluate(run, judges, "--out-dir", str(tmp_path / "ev")) == 2
    finally:
        shutil.move(away, digits)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "pass --mnist-dir DIR" in line and "different" in line
    assert not (tmp_path / "ev").exists()


def test_inference_file(mnist_run, mnist_eval, no_mnist_found, judges, tmp_path, capsys):
    """model.pt: the weight average without discriminators or optimisers, smaller than ckpt.pt;
    it loads, evaluates to the same numbers as ckpt.pt, and cannot be resumed."""
    run = mnist_run[0]
    inf, full = load_checkpoint(str(run / "model.pt")), load_checkpoint(str(run / "ckpt.pt"))
    assert not {"opt_d", "opt_eg", "model", "rng"} & set(inf)
    assert not [k for k in inf["ema"] if k.startswith(MDBiGAN.DISCRIMINATORS)]
    assert inf["config"] == full["config"] and inf["args"]["data"] == full["args"]["data"]
    # about a tenth: the average of E and G only; ckpt.pt adds D, the weights and two Adam moments
    assert os.path.getsize(run / "model.pt") < os.path.getsize(run / "ckpt.pt") / 8
    a = MDBiGAN.from_checkpoint(str(run / "model.pt")).inference_state_dict()
    b = MDBiGAN.from_checkpoint(str(run)).inference_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert evaluate(run / "model.pt", judges, "--out-dir", str(tmp_path / "ev")) == 0
    assert metrics(tmp_path / "ev")[0] == mnist_eval[1]          # the same weights, the same numbers
    capsys.readouterr()
    assert train.main(["--resume", str(run / "model.pt"), "--out-dir", str(tmp_path / "other"),
                       "--device", "cpu"]) == 2
    assert "inference weights only" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "other" / "ckpt.pt").exists()


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("structured", [False, True], ids=["conv", "where-what"])
@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "colour"])
def test_long_codes_generate_any_length(structured, channels):
    cfg = replace(TINY, structured=structured, channels=channels)
    torch.manual_seed(0)
    m = MDBiGAN(cfg).eval()
    with torch.no_grad():
        z_c, z_m = m.sample(3, frames=11)
        assert z_c.shape == (3, cfg.dim_z_c) and z_m.shape == (3, 11, cfg.dim_z_m)
        v = m.generate(z_c, z_m)
        assert v.shape == (3, 11, channels, cfg.size, cfg.size)
        assert v.min() >= 0 and v.max() <= 1
        assert m.sample(2)[1].shape == (2, cfg.frames, cfg.dim_z_m)       # the default: T
        assert m.generate(z_c, z_m[:, :1]).shape == (3, 1, channels, cfg.size, cfg.size)


@pytest.mark.parametrize("structured", [False, True], ids=["conv", "where-what"])
def test_colour_through_both_families(structured):
    cfg = replace(TINY, channels=3, structured=structured)
    torch.manual_seed(0)
    m = MDBiGAN(cfg)
    x = torch.rand(3, cfg.frames, 3, cfg.size, cfg.size, generator=torch.Generator().manual_seed(0))
    assert m.encode_motion(x).shape == (3, cfg.frames, cfg.dim_z_m)
    assert m.encode_content(x).shape == (3, cfg.dim_z_c)
    with torch.no_grad():
        v = m.generate(*m.sample(3))
    assert v.shape == (3, cfg.frames, 3, cfg.size, cfg.size) and 0 <= v.min() and v.max() <= 1
    with pytest.raises(ValueError, match=r"\[B, 4, 3, 16, 16\]"):
        m.encode_motion(x[:, :, :1])                             # grey videos into a colour model
    d, _ = m.d_loss(x)
    assert torch.isfinite(d)
    d.backward()
    assert all(p.grad is not None for p in m.d_parameters())
    m.zero_grad(set_to_none=True)
    g, _ = m.eg_loss(x)
    assert torch.isfinite(g)
    g.backward()
    names = {id(p): n for n, p in m.named_parameters()}
    for p in m.eg_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, names[id(p)]
