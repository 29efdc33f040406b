"""MotionMNIST and MNIST loading: formats, errors, downloads, determinism, the motion table.

    python -m pytest tests/test_data.py -q
"""
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

import data
from conftest import run_copied_alone


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_mnist_roundtrip(tmp_path, gz, fake_mnist):
    imgs, labels = fake_mnist(tmp_path, gz=gz)
    got_i, got_l = data.load_mnist(str(tmp_path))
    assert got_i.dtype == np.uint8 and got_i.shape == (50, 28, 28)
    assert np.array_equal(got_i, imgs) and np.array_equal(got_l, labels)


BROKEN = [pytest.param(lambda raw: raw[:-100], "t10k-images-idx3-ubyte.*truncated", id="truncated"),
          pytest.param(lambda raw: b"\x00\x00\x08\x01" + raw[4:], "magic number", id="wrong-magic"),
          pytest.param(lambda raw: b"\x1f\x8b garbage that is not gzip", "corrupt", id="corrupt-gzip")]


@pytest.mark.parametrize("damage,message", BROKEN)
def test_broken_file_is_a_clear_error(tmp_path, fake_mnist, damage, message):
    fake_mnist(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(ValueError, match=message):
        data.load_mnist(str(tmp_path))


def test_missing_file_names_the_flag(tmp_path, fake_mnist):
    fake_mnist(tmp_path, gz=False)
    os.remove(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(FileNotFoundError, match="--mnist-dir"):
        data.load_mnist(str(tmp_path))


def test_label_count_mismatch(tmp_path, fake_mnist, idx_writer):
    fake_mnist(tmp_path)
    idx_writer(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7), 2049)
    with pytest.raises(ValueError, match="50 images but 7 labels"):
        data.load_mnist(str(tmp_path))


def test_real_mnist_files(real_mnist_dir):
    imgs, labels = data.load_mnist(real_mnist_dir)
    assert imgs.shape == (10000, 28, 28) and labels.shape == (10000,)
    counts = np.bincount(labels, minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_good_bad_and_404(server, tmp_path, monkeypatch, fake_mnist):
    root, url = server
    fake_mnist(root / "good")
    md5 = {n: hashlib.md5((root / "good" / n).read_bytes()).hexdigest() for n in data.MNIST_FILES}
    monkeypatch.setattr(data, "MNIST_FILES", md5)
    for n in md5:                                                # the bad mirror: corrupted bytes
        (root / "bad" / n).write_bytes(b"x" + (root / "good" / n).read_bytes()[1:])
    dest = tmp_path / "cache"
    logs = []
    # 404 mirror first, corrupt mirror second, good mirror last
    data.download_mnist(str(dest), mirrors=(url + "/missing/", url + "/bad/", url + "/good/"),
                        log=logs.append)
    assert sorted(os.listdir(dest)) == sorted(md5)               # nothing else left behind
    assert all("/good/" in line for line in logs)
    assert data.load_mnist(str(dest))[0].shape == (50, 28, 28)


def test_download_of_a_corrupt_file_keeps_nothing(server, tmp_path, fake_mnist):
    root, url = server
    fake_mnist(root / "good")
    for n in data.MNIST_FILES:                                   # bytes whose MD5 cannot match
        (root / "bad" / n).write_bytes(b"x" + (root / "good" / n).read_bytes()[1:])
    with pytest.raises(RuntimeError, match="MD5 mismatch"):
        data.download_mnist(str(tmp_path / "cache"), mirrors=(url + "/bad/",))
    assert os.listdir(tmp_path / "cache") == []


def test_failed_download_is_not_retried_every_command(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("MDBIGAN_MNIST_DIR", raising=False)
    calls = []

    def fail(folder, log=print):
        calls.append(folder)
        raise RuntimeError("no network")
    monkeypatch.setattr(data, "download_mnist", fail)
    for _ in range(2):
        with pytest.warns(UserWarning, match="scikit-learn"):
            data.get_digits(download=True, log=lambda *a: None)
    assert len(calls) == 1


def test_sklearn_fallback_warns_and_works(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("MDBIGAN_MNIST_DIR", raising=False)
    with pytest.warns(UserWarning, match="scikit-learn"):
        ds = data.MotionMNIST("test", download=False)
    assert ds.source == "sklearn-digits" and len(ds) == 179 * 8
    video, motion, digit = ds[5]
    assert video.shape == (20, 64, 64) and video.dtype == np.uint8 and motion == 5


def test_splits_are_disjoint_and_indexed(mnist_dir):
    train, test, full = (data.MotionMNIST(s, mnist_dir) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (90 * 8, 10 * 8, 100 * 8)
    assert test.first_digit == 90
    v, m, d = test[3]
    v2, m2, d2 = full[90 * 8 + 3]                                 # same global video
    assert np.array_equal(v, v2) and (m, d) == (m2, d2) == (3, 90 % 10)


@pytest.mark.parametrize("variant", ["default", "hard"])
def test_deterministic_in_any_order(mnist_dir, variant):
    ds = data.MotionMNIST("all", mnist_dir, variant=variant, rotate=True)
    a, _, _ = ds.render([3, 17, 200, 5])
    b, _, _ = ds.render([200, 5, 17, 3])
    assert np.array_equal(a[[0, 1, 2, 3]], b[[3, 2, 0, 1]])
    assert np.array_equal(ds[17][0], a[1])
    other = data.MotionMNIST("all", mnist_dir, variant=variant, rotate=True, seed=1)
    assert not np.array_equal(other[17][0], a[1])


def com(videos):
    w = videos.astype(float)
    S = videos.shape[-1]
    tot = w.sum((-1, -2))
    return np.stack([(w * np.arange(S)).sum((-1, -2)) / tot,
                     (w * np.arange(S)[:, None]).sum((-1, -2)) / tot], -1)  # (..., 2) x, y


@pytest.mark.parametrize("size", [64, 32])
def test_motions_match_the_spec_table(mnist_dir, size):
    ds = data.MotionMNIST("all", mnist_dir, size=size)
    items = np.arange(400)
    videos, motions, _ = ds.render(items)
    c = com(videos)                                              # (N, T, 2)
    t = np.arange(20)
    slope = ((c - c.mean(1, keepdims=True)) * (t - t.mean())[:, None]).sum(1) / ((t - t.mean()) ** 2).sum()
    step = (size - data.digit_size(size)) / 20                   # 1.8 px at 64x64
    for m, (dx, dy) in enumerate(data._DIRS):
        s = slope[motions == m].mean(0)
        assert np.allclose(s, [dx * step, dy * step], atol=0.1 * size / 64), (m, s)
    # starts: e.g. motion 0 (down) starts top-centre, motion 7 (BR->TL) bottom-right
    c0 = com(ds.render([0, 7])[0][:, 0]) / size                  # (2, 2): x, y as frame fractions
    assert c0[0, 1] < 0.35 and abs(c0[0, 0] - 0.5) < 0.1         # top centre
    assert c0[1, 0] > 0.65 and c0[1, 1] > 0.65                   # bottom right


def test_hard_variant_stays_in_frame_with_random_speed(mnist_dir):
    ds = data.MotionMNIST("all", mnist_dir, variant="hard", jitter=0.0)
    pos = data.trajectories(np.arange(800) % 8, np.arange(800), variant="hard", jitter=0.0)
    margin = 64 - 28
    assert pos.min() >= -1e-9 and pos.max() <= margin + 1e-9
    speed = np.abs(np.diff(pos, axis=1)).max(-1).mean(1)
    assert 0.6 - 1e-6 <= speed.min() and speed.max() <= 1.8 + 1e-6 and speed.std() > 0.2
    videos, _, _ = ds.render(np.arange(16))
    assert videos.shape == (16, 20, 64, 64)


@pytest.mark.parametrize("kwargs,error,message", [
    pytest.param(dict(split="val"), ValueError, "split", id="split"),
    pytest.param(dict(variant="harder"), ValueError, "variant", id="variant"),
    pytest.param(dict(frames=0), ValueError, "frames", id="frames"),
    pytest.param(dict(mnist_dir="/no/such/folder"), FileNotFoundError, "does not exist", id="folder")])
def test_bad_options_are_clear_errors(mnist_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        data.MotionMNIST(**{"split": "test", "mnist_dir": mnist_dir, **kwargs})


def test_index_out_of_range(mnist_dir):
    with pytest.raises(IndexError):
        data.MotionMNIST("test", mnist_dir)[10_000]


def test_preview_writes_a_png(mnist_dir, tmp_path):
    assert data.main(["--preview", str(tmp_path / "p.png"), "--mnist-dir", mnist_dir]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_round_trips(mnist_dir, tmp_path):
    assert data.main(["--export", str(tmp_path / "v.npz"), "--count", "12", "--mnist-dir", mnist_dir]) == 0
    z = np.load(tmp_path / "v.npz")
    assert z["videos"].shape == (12, 20, 64, 64) and z["motion"].tolist() == [i % 8 for i in range(12)]
    ds = data.MotionMNIST("test", mnist_dir)
    videos, motion, digit = ds.render(np.arange(12))
    assert np.array_equal(z["videos"], videos) and np.array_equal(z["content"], digit)
    read, labels = data.read_videos(str(tmp_path / "v.npz"))   # what train.py --data reads
    assert read.shape == (12, 20, 64, 64, 1) and sorted(labels) == ["content", "motion"]


def test_cli_error_on_missing_folder(tmp_path):
    assert data.main(["--preview", str(tmp_path / "q.png"), "--mnist-dir", "/no/such"]) == 2


def test_works_copied_alone(tmp_path):
    """data.py copied alone into an empty folder renders MotionMNIST (NumPy only)."""
    code = ("import numpy as np, sys, data\n"
            "digits = np.random.default_rng(0).integers(0, 256, (3, 14, 14), np.uint8)\n"
            "v = data.render(digits, np.array([0, 4, 7]), np.arange(3), frames=5, size=32, variant='affine')\n"
            "assert 'torch' not in sys.modules\n"
            "print(v.shape, v.dtype)\n")
    r = run_copied_alone(os.path.join(os.path.dirname(__file__), "..", "data.py"), tmp_path, code)
    assert r.returncode == 0, r.stderr
    assert "(3, 5, 32, 32) uint8" in r.stdout


def test_affine_variant_turns_and_zooms(mnist_dir):
    """Labels 0..3 translate as the default's; 4, 5 turn in opposite senses about the centre; 6, 7
    grow and shrink there (the ink's spread from its centre of mass, frame by frame)."""
    ds = data.MotionMNIST("all", mnist_dir, variant="affine", jitter=0.0)
    default = data.MotionMNIST("all", mnist_dir, jitter=0.0)
    videos, motions, _ = ds.render(np.arange(16))
    assert np.array_equal(videos[motions < 4], default.render(np.arange(16))[0][motions < 4])
    w = videos.astype(float)
    c = com(videos)                                              # (N, T, 2)
    yy, xx = np.mgrid[0:64, 0:64]
    spread = np.sqrt(((xx - c[..., :1, None]) ** 2 + (yy - c[..., 1:, None]) ** 2) * w).sum((-1, -2)) / w.sum((-1, -2))
    zoom_in, zoom_out = spread[motions == 6], spread[motions == 7]
    assert (zoom_in[:, -1] > 1.6 * zoom_in[:, 0]).all() and (zoom_out[:, 0] > 1.6 * zoom_out[:, -1]).all()
    assert np.abs(c[motions >= 4] - c[motions >= 4].mean(1, keepdims=True)).max() < 3   # in place
    angles, scales = data.affine_pose(np.arange(8), 20)
    assert angles[4, -1] > 0 > angles[4, 0] and angles[5, -1] < 0 < angles[5, 0]
    assert scales[6, 0] < scales[6, -1] and (angles[:4] == 0).all()
    assert data.motion_names("affine")[4:] == ("clockwise", "anticlockwise", "zoom in", "zoom out")


def test_colour_videos_take_one_hue_each(mnist_dir):
    ds = data.MotionMNIST("test", mnist_dir, colour=True, size=32)
    videos, labels = ds.clips(np.arange(24))
    grey, _, digits = ds.render(np.arange(24))
    assert videos.shape == (24, 20, 3, 32, 32) and np.array_equal(labels["content"], digits)
    ink = grey > 0
    for i in range(24):                                          # every lit pixel: the hue times the grey
        want = np.rint(grey[i][:, None] * data.HUES[labels["hue"][i]][None, :, None, None])
        assert np.array_equal(videos[i], want.astype(np.uint8)), i
    assert len(set(labels["hue"])) > 3 and ink.any()
