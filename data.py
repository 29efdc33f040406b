"""MotionMNIST: MNIST test digits moving in 8 directions (MDBiGAN paper, section 4.1).

NumPy and the standard library only (scikit-learn and matplotlib are imported lazily, for the
offline fallback digits and the preview picture), so this file can be copied into any project.

Each of the MNIST test digits is given each of 8 motions; the video at index i*8 + m is digit i
with motion m. Default videos are 20 frames of 64x64 uint8, the digit's top-left corner moving
from the starts below (README, Data) at M / T px per frame (M = 64 - 28 = 36, T = 20: 1.8 px),
plus N(0, 1) px jitter per frame, rounded to whole pixels and clipped so the digit stays in the
frame. A smaller frame scales the digit, the positions and the jitter by size / 64.

    label  0 down  1 up  2 left  3 right  4 TL->BR  5 BL->TR  6 TR->BL  7 BR->TL

Options: `rotate=True` turns the digit by a fresh angle in [0, 15) degrees at every frame, as the
authors' code did (it makes the digit flicker, so it is off by default); `variant="hard"` gives
every video a random speed (0.6 to 1.8 px per frame at 64x64 and T = 20) and a random start that
keeps the digit wholly inside the frame, so that position alone no longer gives the motion away.

Held-out split: the last 10% of the digits (MNIST: test digits 9000..9999, 8,000 videos) form
split "test"; training uses split "train" and never sees them; "all" is every video.

Where the digits come from, in order: the `mnist_dir` argument (`--mnist-dir`), the environment
variable MDBIGAN_MNIST_DIR, the cache folder ~/.cache/mdbigan/mnist, a download of the two MNIST
test-set files (MD5-checked, written atomically into the cache; MDBIGAN_OFFLINE=1 skips it), and
last the 1,797 8x8 digits that ship with scikit-learn, resized to 28x28, with a warning.

Usage:
    python data.py --preview motions.png [--mnist-dir DIR] [--variant hard]
    python data.py --export videos.npz --count 1000 [--split test]
    python data.py --bench                      # videos/s of batch rendering on one core
    python data.py --download [--mnist-dir DIR] # fetch MNIST into the cache (or DIR)

    from data import MotionMNIST
    ds = MotionMNIST("train", mnist_dir="path/to/mnist")
    video, motion, digit = ds[0]                # uint8 [20, 64, 64], int, int
    videos, motions, digits = ds.render(np.arange(256))   # a batch, vectorised
"""
import argparse
import gzip
import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings

import numpy as np

MOTIONS = ("down", "up", "left", "right", "TL->BR", "BL->TR", "TR->BL", "BR->TL")
# Start (x, y) in units of the margin M, and direction of travel, for each motion label.
_STARTS = np.array([(0.5, 0), (0.5, 1), (1, 0.5), (0, 0.5), (0, 0), (0, 1), (1, 0), (1, 1)])
_DIRS = np.array([(0, 1), (0, -1), (-1, 0), (1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)])

MNIST_FILES = {  # file name -> MD5 of the gzip file
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
HELP_GET_MNIST = ("download t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from an MNIST "
                  "mirror (e.g. %s) into a folder and pass it with --mnist-dir DIR "
                  "(or set MDBIGAN_MNIST_DIR)" % MIRRORS[0])


# ----------------------------------------------------------------------------- MNIST files

def _read_idx(path, magic, ndim):
    """Reads one IDX file (gzip or raw) and checks its header against its length."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read ({e}); the file is corrupt or truncated: "
                         f"delete it and {HELP_GET_MNIST}") from None
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is "
                         f"truncated: delete it and {HELP_GET_MNIST}")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: magic number {got:#010x}, expected {magic:#010x}; this is not "
                         f"the MNIST file it is named after: {HELP_GET_MNIST}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    want = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != want:
        raise ValueError(f"{path}: header says {dims} ({want} bytes) but the file holds "
                         f"{len(raw)} bytes; it is truncated or corrupt: delete it and "
                         f"{HELP_GET_MNIST}")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_file(folder, stem):
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder}: no {stem}.gz or {stem} here; {HELP_GET_MNIST}")


def load_mnist(folder):
    """Loads the MNIST test set from a folder of IDX files (gzip or raw).

    Returns (images uint8 [N, 28, 28], labels uint8 [N]). Raises FileNotFoundError or ValueError
    with a message naming the file and what to do when a file is missing, corrupt or truncated.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"MNIST folder {folder!r} does not exist; {HELP_GET_MNIST}")
    images = _read_idx(_find_file(folder, "t10k-images-idx3-ubyte"), 2051, 3)
    labels = _read_idx(_find_file(folder, "t10k-labels-idx1-ubyte"), 2049, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{folder}: images are {images.shape[1:]}, expected 28x28 MNIST digits")
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels; the two files "
                         "do not belong together")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{folder}: label {labels.max()} out of range 0..9; corrupt label file")
    return images, labels


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mdbigan", "mnist")


def download_mnist(folder, mirrors=MIRRORS, timeout=10.0, log=print):
    """Downloads the two MNIST test-set files into `folder`, trying each mirror in turn.

    Each file is MD5-checked and written atomically (temporary file, then rename), so a bad or
    interrupted download never leaves a file behind. Raises RuntimeError if no mirror served it.
    """
    os.makedirs(folder, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        dest = os.path.join(folder, name)
        if os.path.isfile(dest) and hashlib.md5(open(dest, "rb").read()).hexdigest() == md5:
            continue
        errors = []
        for mirror in mirrors:
            url = mirror + name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    blob = r.read()
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{url}: {e}")
                continue
            if hashlib.md5(blob).hexdigest() != md5:
                errors.append(f"{url}: MD5 mismatch (got {hashlib.md5(blob).hexdigest()})")
                continue
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=name + ".", suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, dest)
            log(f"data: downloaded {url} -> {dest}")
            break
        else:
            raise RuntimeError(f"could not download {name}:\n  " + "\n  ".join(errors))
    return folder


def _resize(images, size):
    """Bilinear resize of [N, h, w] float images to [N, size, size] (pixel centres aligned)."""
    n, h, w = images.shape

    def axis(n_in):
        pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    ylo, yhi, wy = axis(h)
    xlo, xhi, wx = axis(w)
    rows = images[:, ylo] * (1 - wy)[:, None] + images[:, yhi] * wy[:, None]  # (N, size, w)
    return rows[:, :, xlo] * (1 - wx) + rows[:, :, xhi] * wx                 # (N, size, size)


def load_sklearn_digits():
    """The 1,797 8x8 digits of scikit-learn, resized to 20x20 and centred in 28x28 like MNIST."""
    from sklearn.datasets import load_digits
    d = load_digits()
    small = d.images.astype(np.float64) / 16.0                    # (N, 8, 8) in [0, 1]
    big = np.zeros((len(small), 28, 28))
    big[:, 4:24, 4:24] = _resize(small, 20)
    return np.clip(big * 255 + 0.5, 0, 255).astype(np.uint8), d.target.astype(np.uint8)


def get_digits(mnist_dir=None, download=None, log=print):
    """Finds the digits: (images uint8 [N, 28, 28], labels uint8 [N], source str).

    Order: `mnist_dir`, $MDBIGAN_MNIST_DIR, the cache folder, a download into the cache (unless
    download=False or MDBIGAN_OFFLINE=1), then scikit-learn's digits with a warning. An explicit
    folder that is missing or broken is an error, never silently replaced.
    """
    if mnist_dir:
        return (*load_mnist(mnist_dir), os.path.abspath(mnist_dir))
    if os.environ.get("MDBIGAN_MNIST_DIR"):
        folder = os.environ["MDBIGAN_MNIST_DIR"]
        return (*load_mnist(folder), os.path.abspath(folder))
    cache = cache_dir()
    if all(os.path.isfile(os.path.join(cache, n)) for n in MNIST_FILES):
        return (*load_mnist(cache), cache)
    if download is None:
        download = os.environ.get("MDBIGAN_OFFLINE", "") in ("", "0")
    failed = os.path.join(cache, ".download_failed")   # one try a day, not one per command
    if download and os.path.isfile(failed) and time.time() - os.path.getmtime(failed) < 86400:
        log(f"data: not downloading MNIST again (it failed within a day; delete {failed} to retry)")
        download = False
    if download:
        try:
            download_mnist(cache, log=log)
            return (*load_mnist(cache), cache)
        except (RuntimeError, OSError) as e:
            log(f"data: MNIST download failed: {e}")
            try:
                os.makedirs(cache, exist_ok=True)
                open(failed, "w").close()
            except OSError:
                pass   # a read-only cache: then it is tried again next time
    warnings.warn("MNIST not found and not downloadable: using scikit-learn's 1,797 8x8 digits "
                  "resized to 28x28 instead (blurrier, fewer digits; results are not comparable "
                  f"with MNIST). To use MNIST, {HELP_GET_MNIST}.", stacklevel=2)
    return (*load_sklearn_digits(), "sklearn-digits")


# ----------------------------------------------------------------------------- rendering

def _uniform(seed, index, stream, shape):
    """Uniforms in (0, 1), [n, *shape], that depend only on (seed, video index, stream).

    A counter-based generator (splitmix64 of the counter), fully vectorised, so any video comes
    out the same in any order and any worker process; drawing per video from its own
    np.random.Generator would cost more than rendering the video.
    """
    index = np.asarray(index, np.uint64).reshape(-1, *([1] * len(shape)))
    count = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    with np.errstate(over="ignore"):
        key = (np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
               + np.uint64(stream) * np.uint64(0xAEF17502108EF2D9))
        x = index * np.uint64(0x9E3779B97F4A7C15) + key + count * np.uint64(0x632BE59BD9B4E019)
        for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            x = (x ^ (x >> np.uint64(shift))) * np.uint64(mul)
        x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53


def _normal(seed, index, stream, shape):
    """Standard normals [n, *shape] from two streams of _uniform (Box-Muller)."""
    u1, u2 = _uniform(seed, index, 2 * stream, shape), _uniform(seed, index, 2 * stream + 1, shape)
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _rotate(patches, angles_deg):
    """Rotates [N, d, d] uint8 patches about their centres (bilinear, zeros outside)."""
    n, d, _ = patches.shape
    c = (d - 1) / 2
    a = np.deg2rad(angles_deg)[:, None, None]
    yy, xx = np.mgrid[0:d, 0:d] - c
    sx = np.cos(a) * xx + np.sin(a) * yy + c                    # inverse map: source coordinates
    sy = -np.sin(a) * xx + np.cos(a) * yy + c
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    img = np.pad(patches.astype(np.float32), ((0, 0), (1, 2), (1, 2)))
    nn = np.arange(n)[:, None, None]

    def at(y, x):  # reads with a one-pixel zero border so out-of-range samples are 0
        return img[nn, np.clip(y + 1, 0, d + 2), np.clip(x + 1, 0, d + 2)]

    out = (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
           + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def trajectories(motions, index, frames=20, size=64, jitter=1.0, variant="default", seed=0):
    """Top-left (x, y) positions of the digit, float [n, frames, 2] before rounding, in pixels.

    motions [n] are labels 0..7 and index [n] the global video indices that seed the randomness.
    """
    if variant not in ("default", "hard"):
        raise ValueError(f"variant must be 'default' or 'hard', got {variant!r}")
    motions = np.asarray(motions)
    if motions.size and (motions.min() < 0 or motions.max() > 7):
        raise ValueError(f"motion labels must be in 0..7, got {motions.min()}..{motions.max()}")
    scale = size / 64
    margin = size - digit_size(size)
    t = np.arange(frames, dtype=np.float64)[None, :, None]
    d = _DIRS[motions][:, None, :].astype(np.float64)         # (n, 1, 2)
    if variant == "default":
        start = _STARTS[motions][:, None, :] * margin
        pos = start + d * (margin / frames) * t
    else:
        # speed in px/frame, scaled with frame size and so that the path length matches T = 20
        u = _uniform(seed, index, 10, (3,))                      # speed, start x, start y
        speed = (0.6 + 1.2 * u[:, 0]) * scale * 20 / frames
        travel = speed[:, None] * (frames - 1) * d[:, 0]        # (n, 2) signed distance
        lo, hi = np.maximum(0, -travel), np.minimum(margin, margin - travel)
        start = (lo + (hi - lo) * u[:, 1:])[:, None, :]
        pos = start + d * speed[:, None, None] * t
    return pos + jitter * scale * _normal(seed, index, 1, (frames, 2))


def digit_size(size):
    return max(1, int(round(28 * size / 64)))


def render(digits, motions, index, frames=20, size=64, jitter=1.0, rotate=False,
           variant="default", seed=0):
    """Renders videos, vectorised: uint8 [n, frames, size, size].

    digits [n, d, d] uint8 are the digit images already at size digit_size(size); motions [n]
    labels 0..7; index [n] the global video indices that seed the jitter, speeds and angles.
    """
    n, d = len(digits), digits.shape[-1]
    margin = size - d
    pos = trajectories(motions, index, frames, size, jitter, variant, seed)
    x, y = np.clip(np.rint(pos), 0, margin).astype(np.intp).transpose(2, 0, 1)  # (n, frames) each
    if rotate:
        angles = 15 * _uniform(seed, index, 11, (frames,))                  # in [0, 15) degrees
        digits = _rotate(np.repeat(digits, frames, 0), angles.ravel())      # (n*frames, d, d)
        nn = np.arange(n * frames)
        x, y = x.ravel(), y.ravel()
    else:
        nn = np.arange(n)[:, None]
    # frame[i, j] = digit[i - y, j - x]: pad the digit by the margin on every side, then each
    # frame is a size x size window of it starting at (margin - y, margin - x).
    padded = np.pad(digits, ((0, 0), (margin, margin), (margin, margin)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))
    out = windows[nn, margin - y, margin - x]      # (n, frames, size, size) or (n*frames, ...)
    return out.reshape(n, frames, size, size)


class MotionMNIST:
    """MotionMNIST videos: plain __len__/__getitem__ (a torch Dataset without importing torch).

    Items are (video uint8 [frames, size, size], motion_label int, digit_label int). `render`
    gives a whole batch at once, which is much faster than indexing one by one.
    """

    def __init__(self, split="train", mnist_dir=None, frames=20, size=64, jitter=1.0,
                 rotate=False, variant="default", seed=0, download=None, log=print):
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if variant not in ("default", "hard"):
            raise ValueError(f"variant must be 'default' or 'hard', got {variant!r}")
        if not (isinstance(frames, int) and frames >= 1):
            raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
        if not (isinstance(size, int) and size >= 8):
            raise ValueError(f"size must be an integer >= 8, got {size!r}")
        if not jitter >= 0:
            raise ValueError(f"jitter must be >= 0 px, got {jitter!r}")
        images, labels, self.source = get_digits(mnist_dir, download, log)
        n_test = max(1, len(images) // 10)                        # held out: the last 10%
        first, last = {"train": (0, len(images) - n_test), "test": (len(images) - n_test,
                       len(images)), "all": (0, len(images))}[split]
        self.split, self.first_digit, self.n_digits = split, first, last - first
        self.frames, self.size, self.jitter, self.rotate = frames, size, jitter, rotate
        self.variant, self.seed = variant, seed
        self.labels = labels[first:last].astype(np.int64)
        self.images = images[first:last]                           # 28x28 originals
        d = digit_size(size)
        self.digits = self.images if d == 28 else np.clip(
            _resize(self.images.astype(np.float64), d) + 0.5, 0, 255).astype(np.uint8)

    def __len__(self):
        return self.n_digits * 8

    def render(self, items):
        """Videos uint8 [n, T, S, S], motion labels int64 [n], digit labels int64 [n]."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if items.size and (items.min() < -len(self) or items.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} videos")
        items = items % max(1, len(self))
        digit, motion = items // 8, items % 8
        index = (self.first_digit + digit) * 8 + motion          # global index seeds the video
        videos = render(self.digits[digit], motion, index, self.frames, self.size, self.jitter,
                        self.rotate, self.variant, self.seed)
        return videos, motion, self.labels[digit]

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(i).__name__}")
        videos, motion, digit = self.render([i])
        return videos[0], int(motion[0]), int(digit[0])


# ----------------------------------------------------------------------------- command line

def preview(path, ds, frames_shown=None, title=None):
    """Saves a picture: one row per motion (the split's 8th digit's videos), frames across, labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    videos, _, _ = ds.render((np.arange(8) + 8 * 7) % len(ds))
    T = ds.frames if frames_shown is None else min(frames_shown, ds.frames)
    fig, axes = plt.subplots(8, T, figsize=(T * 0.8, 8 * 0.85), squeeze=False)
    for m in range(8):
        for t in range(T):
            ax = axes[m, t]
            ax.imshow(videos[m, t], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if m == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[m, 0].set_ylabel(f"{m}: {MOTIONS[m]}", fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle(title or f"MotionMNIST ({ds.variant}, {ds.source})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def bench(n=10_000, batch=1000):
    """Batch-rendering speed on random digits (no MNIST needed), one core."""
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    for variant, rotate in (("default", False), ("hard", False), ("default", True)):
        m = n if not rotate else n // 10
        render(digits[:10], np.arange(10) % 8, np.arange(10), variant=variant, rotate=rotate)
        t0 = time.perf_counter()
        for start in range(0, m, batch):
            render(digits, np.arange(batch) % 8, np.arange(start, start + batch), variant=variant,
                   rotate=rotate)
        dt = time.perf_counter() - t0
        print(f"render {variant:7s} rotate={rotate!s:5s}: {m} videos of 20x64x64 in {dt:.2f} s "
              f"= {m / dt:,.0f} videos/s (batch {batch}, one process)")


def main(argv=None):
    p = argparse.ArgumentParser(description="MotionMNIST: preview, export, benchmark.")
    p.add_argument("--preview", metavar="FILE.png", help="write a picture of the 8 motions")
    p.add_argument("--export", metavar="FILE.npz", help="write videos and labels to a .npz file")
    p.add_argument("--count", type=int, default=1000, help="videos to export (default 1000)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"],
                   help="split to export (default test, the held-out digits)")
    p.add_argument("--mnist-dir", help="folder with the MNIST test-set IDX files")
    p.add_argument("--variant", default="default", choices=["default", "hard"],
                   help="default motions, or random speed and start")
    p.add_argument("--rotate", action="store_true", help="rotate the digit at every frame")
    p.add_argument("--frames", type=int, default=20, help="frames per video (default 20)")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--bench", action="store_true", help="time batch rendering")
    p.add_argument("--download", action="store_true", help="download MNIST into the cache "
                   "folder, or into --mnist-dir when given")
    args = p.parse_args(argv)
    if not (args.preview or args.export or args.bench or args.download):
        p.error("nothing to do: give --preview FILE.png, --export FILE.npz, --bench or --download")
    try:
        if args.download:
            download_mnist(args.mnist_dir or cache_dir())
        if args.bench:
            bench()
        if args.preview or args.export:
            ds = MotionMNIST(args.split, args.mnist_dir, args.frames, args.size,
                             rotate=args.rotate, variant=args.variant, seed=args.seed)
        if args.preview:
            preview(args.preview, ds)
            print(f"wrote {args.preview}")
        if args.export:
            if args.count < 1:
                p.error(f"--count must be >= 1, got {args.count}")
            n = min(args.count, len(ds))
            videos, motions, digits = ds.render(np.arange(n))
            tmp = args.export + ".tmp.npz"
            np.savez_compressed(tmp, videos=videos, motions=motions, digits=digits)
            os.replace(tmp, args.export)
            print(f"wrote {args.export}: videos uint8 {videos.shape}, motions, digits")
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
