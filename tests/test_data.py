"""MotionMNIST and MNIST loading: formats, errors, downloads, determinism, the motion table.

    python -m pytest tests/test_data.py -q
"""
import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

import data
from conftest import SHARED_MNIST


def write_idx(path, arr, magic, gz=True):
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    blob = head + arr.astype(np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(blob) if gz else blob)
    return blob


def fake_mnist(folder, n=50, gz=True):
    rng = np.random.default_rng(0)
    imgs = np.zeros((n, 28, 28), np.uint8)
    imgs[:, 8:20, 10:18] = rng.integers(100, 256, (n, 12, 8))   # a bright block as the "digit"
    labels = np.arange(n) % 10
    sfx = ".gz" if gz else ""
    write_idx(os.path.join(folder, "t10k-images-idx3-ubyte" + sfx), imgs, 2051, gz)
    write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte" + sfx), labels, 2049, gz)
    return imgs, labels


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_mnist_roundtrip(tmp_path, gz):
    imgs, labels = fake_mnist(tmp_path, gz=gz)
    got_i, got_l = data.load_mnist(str(tmp_path))
    assert got_i.dtype == np.uint8 and got_i.shape == (50, 28, 28)
    assert np.array_equal(got_i, imgs) and np.array_equal(got_l, labels)


def test_truncated_and_corrupt_files_give_clear_errors(tmp_path):
    fake_mnist(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])                                    # truncated
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        data.load_mnist(str(tmp_path))
    p.write_bytes(b"\x00\x00\x08\x01" + raw[4:])                 # wrong magic
    with pytest.raises(ValueError, match="magic number"):
        data.load_mnist(str(tmp_path))
    p.write_bytes(b"\x1f\x8b garbage that is not gzip")          # corrupt gzip
    with pytest.raises(ValueError, match="corrupt"):
        data.load_mnist(str(tmp_path))
    os.remove(p)
    with pytest.raises(FileNotFoundError, match="--mnist-dir"):
        data.load_mnist(str(tmp_path))


def test_label_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7), 2049)
    with pytest.raises(ValueError, match="50 images but 7 labels"):
        data.load_mnist(str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="no ../shared/mnist")
def test_real_mnist_files():
    imgs, labels = data.load_mnist(SHARED_MNIST)
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


def test_download_good_bad_and_404(server, tmp_path, monkeypatch):
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
    dest2 = tmp_path / "cache2"
    with pytest.raises(RuntimeError, match="MD5 mismatch"):
        data.download_mnist(str(dest2), mirrors=(url + "/bad/",))
    assert os.listdir(dest2) == []                               # the corrupt file was not kept


def test_sklearn_fallback_warns_and_works(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("MDBIGAN_MNIST_DIR", raising=False)
    with pytest.warns(UserWarning, match="scikit-learn"):
        ds = data.MotionMNIST("test", download=False)
    assert ds.source == "sklearn-digits" and len(ds) == 179 * 8
    video, motion, digit = ds[5]
    assert video.shape == (20, 64, 64) and video.dtype == np.uint8 and motion == 5


@pytest.fixture(scope="module")
def ds_fake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    fake_mnist(folder, n=100)
    return str(folder)


def test_splits_are_disjoint_and_indexed(ds_fake):
    train, test, full = (data.MotionMNIST(s, ds_fake) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (90 * 8, 10 * 8, 100 * 8)
    assert test.first_digit == 90
    v, m, d = test[3]
    v2, m2, d2 = full[90 * 8 + 3]                                 # same global video
    assert np.array_equal(v, v2) and (m, d) == (m2, d2) == (3, 90 % 10)


@pytest.mark.parametrize("variant", ["default", "hard"])
def test_deterministic_in_any_order(ds_fake, variant):
    ds = data.MotionMNIST("all", ds_fake, variant=variant, rotate=True)
    a, _, _ = ds.render([3, 17, 200, 5])
    b, _, _ = ds.render([200, 5, 17, 3])
    assert np.array_equal(a[[0, 1, 2, 3]], b[[3, 2, 0, 1]])
    assert np.array_equal(ds[17][0], a[1])
    other = data.MotionMNIST("all", ds_fake, variant=variant, rotate=True, seed=1)
    assert not np.array_equal(other[17][0], a[1])


def com(videos):
    w = videos.astype(float)
    S = videos.shape[-1]
    tot = w.sum((-1, -2))
    return np.stack([(w * np.arange(S)).sum((-1, -2)) / tot,
                     (w * np.arange(S)[:, None]).sum((-1, -2)) / tot], -1)  # (..., 2) x, y


@pytest.mark.parametrize("size", [64, 32])
def test_motions_match_the_spec_table(ds_fake, size):
    ds = data.MotionMNIST("all", ds_fake, size=size)
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


def test_hard_variant_stays_in_frame_with_random_speed(ds_fake):
    ds = data.MotionMNIST("all", ds_fake, variant="hard", jitter=0.0)
    pos = data.trajectories(np.arange(800) % 8, np.arange(800), variant="hard", jitter=0.0)
    margin = 64 - 28
    assert pos.min() >= -1e-9 and pos.max() <= margin + 1e-9
    speed = np.abs(np.diff(pos, axis=1)).max(-1).mean(1)
    assert 0.6 - 1e-6 <= speed.min() and speed.max() <= 1.8 + 1e-6 and speed.std() > 0.2
    videos, _, _ = ds.render(np.arange(16))
    assert videos.shape == (16, 20, 64, 64)


def test_bad_options_are_clear_errors(ds_fake):
    with pytest.raises(ValueError, match="split"):
        data.MotionMNIST("val", ds_fake)
    with pytest.raises(ValueError, match="variant"):
        data.MotionMNIST("train", ds_fake, variant="harder")
    with pytest.raises(IndexError):
        data.MotionMNIST("test", ds_fake)[10_000]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.MotionMNIST("test", "/no/such/folder")


def test_preview_and_export(ds_fake, tmp_path):
    assert data.main(["--preview", str(tmp_path / "p.png"), "--mnist-dir", ds_fake]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data.main(["--export", str(tmp_path / "v.npz"), "--count", "12", "--mnist-dir", ds_fake]) == 0
    z = np.load(tmp_path / "v.npz")
    assert z["videos"].shape == (12, 20, 64, 64) and z["motions"].tolist() == [i % 8 for i in range(12)]
    assert data.main(["--preview", str(tmp_path / "q.png"), "--mnist-dir", "/no/such"]) == 1
