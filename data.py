"""MotionMNIST (MNIST test digits moving in 8 ways; MDBiGAN paper, section 4.1) and video files.

NumPy and the standard library only (scikit-learn, matplotlib and torch are imported lazily: for
the offline fallback digits, the preview picture, and resizing a video file's frames), so this
file can be copied into any project.

Each of the MNIST test digits is given each of 8 motions; the video at index i*8 + m is digit i
with motion m. Default videos are 20 frames of 64x64 uint8, the digit's top-left corner moving
from the starts below (docs/model.md) at M / T px per frame (M = 64 - 28 = 36, T = 20: 1.8 px),
plus N(0, 1) px jitter per frame, rounded to whole pixels and clipped so the digit stays in the
frame. A smaller frame scales the digit, the positions and the jitter by size / 64.

    label  0 down  1 up  2 left  3 right  4 TL->BR  5 BL->TR  6 TR->BL  7 BR->TL

Variants (the same labels 0..7, sizes and splits):
  hard     every video gets a random speed (0.6 to 1.8 px per frame at 64x64 and T = 20) and a
           random start that keeps the digit wholly inside the frame, so that position alone no
           longer gives the motion away.
  affine   motions translation cannot express. Labels 0..3 move as the default's (down, up,
           left, right); the others stay at the frame's centre (with the jitter) and
               4 clockwise       turn clockwise on screen by 8 degrees a frame, from -76 to +76
               5 anticlockwise   the same the other way
               6 zoom in         grow from 0.6 to 1.2 times the default digit's size
               7 zoom out        shrink from 1.2 to 0.6 times
           about the middle frame (AFFINE_DEGREES, AFFINE_SCALES: over T frames, the same
           range), bilinearly resampled.
Options: `rotate=True` turns the digit by a fresh angle in [0, 15) degrees at every frame, as the
authors' code did (it makes the digit flicker, so it is off by default); `colour=True` draws each
video's digit in one of 6 hues (HUES: red, yellow, green, cyan, blue, magenta), its label "hue".

Held-out split: the last 10% of the digits (MNIST: test digits 9000..9999, 8,000 videos) form
split "test"; training uses split "train" and never sees them; "all" is every video.

Where the digits come from, in order: the `mnist_dir` argument (`--mnist-dir`), the environment
variable MDBIGAN_MNIST_DIR, the cache folder ~/.cache/mdbigan/mnist, a download of the two MNIST
test-set files (MD5-checked, written atomically into the cache; MDBIGAN_OFFLINE=1 skips it), and
last the 1,797 8x8 digits that ship with scikit-learn, resized to 28x28, with a warning.

Video files (train.py --data, VideoFile): an .npz holding `videos`, uint8 [N, T, H, W] or
[N, T, H, W, C] with C = 1 or 3, and optional int label arrays [N] (`content`, `motion`, any
other name), which only evaluation reads; an optional `split` [N] (0 train, 1 test) replaces the
seeded 10% held out. `--export` writes MotionMNIST in exactly this format, and `--sprites` the
Sprites benchmark (Li & Mandt 2018) built from its sheets, with the authors' split.

Usage:
    python data.py --preview motions.png [--mnist-dir DIR] [--variant affine] [--colour]
    python data.py --export videos.npz --count 1000 [--split test] [--size 32] [--colour]
    python data.py --sprites SHEETS --export sprites.npz   # the Sprites benchmark, from its sheets
    python data.py --bench                      # videos/s of batch rendering on one core
    python data.py --download [--mnist-dir DIR] # fetch MNIST into the cache (or DIR)

    from data import MotionMNIST
    ds = MotionMNIST("train", mnist_dir="path/to/mnist")
    video, motion, digit = ds[0]                # uint8 [20, 64, 64], int, int
    videos, motions, digits = ds.render(np.arange(256))   # a batch, vectorised
    videos, labels = ds.clips(np.arange(256))   # uint8 [256, 20, 1, 64, 64], {"motion", "content"}
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
AFFINE_MOTIONS = MOTIONS[:4] + ("clockwise", "anticlockwise", "zoom in", "zoom out")
VARIANTS = ("default", "hard", "affine")
# the affine variant's turns and zooms over a 20-frame video, centred on its middle frame
AFFINE_DEGREES = 152.0           # 8 degrees a frame
AFFINE_SCALES = (0.6, 1.2)       # the digit's size relative to the default's, first to last frame
HUES = np.array([(1, .2, .2), (1, 1, .2), (.2, 1, .2), (.2, 1, 1), (.2, .2, 1), (1, .2, 1)])
HUE_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")


def motion_names(variant):
    """The 8 motion labels' names of a variant."""
    return AFFINE_MOTIONS if variant == "affine" else MOTIONS
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


def _bilinear(patches, sx, sy):
    """Samples [N, d, d] patches at source coordinates sx, sy [N, h, w] (bilinear, zeros outside)."""
    n, d, _ = patches.shape
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    img = np.pad(patches.astype(np.float32), ((0, 0), (1, 2), (1, 2)))
    nn = np.arange(n)[:, None, None]

    def at(y, x):  # reads with a one-pixel zero border so out-of-range samples are 0
        return img[nn, np.clip(y + 1, 0, d + 2), np.clip(x + 1, 0, d + 2)]

    out = (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
           + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _rotate(patches, angles_deg):
    """Rotates [N, d, d] uint8 patches about their centres (bilinear, zeros outside)."""
    d = patches.shape[-1]
    c = (d - 1) / 2
    a = np.deg2rad(angles_deg)[:, None, None]
    yy, xx = np.mgrid[0:d, 0:d] - c
    # inverse map: source coordinates
    return _bilinear(patches, np.cos(a) * xx + np.sin(a) * yy + c, -np.sin(a) * xx + np.cos(a) * yy + c)


def _warp(digits, pos, angles_deg, scales, size):
    """Videos [n, T, size, size] of digits [n, d, d] turned by angles and scaled by scales [n, T]
    about their centres, with their box's top-left corner at pos [n, T, 2] (bilinear)."""
    n, T = angles_deg.shape
    d = digits.shape[-1]
    c = (d - 1) / 2
    a = np.deg2rad(angles_deg).reshape(-1, 1, 1)                 # (n*T, 1, 1)
    s = scales.reshape(-1, 1, 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    xx = xx - pos[..., 0].reshape(-1, 1, 1) - c                  # frame pixel relative to the centre
    yy = yy - pos[..., 1].reshape(-1, 1, 1) - c
    sx = (np.cos(a) * xx + np.sin(a) * yy) / s + c               # inverse map: source coordinates
    sy = (-np.sin(a) * xx + np.cos(a) * yy) / s + c
    return _bilinear(np.repeat(digits, T, 0), sx, sy).reshape(n, T, size, size)


def affine_pose(motions, frames):
    """(angles in degrees, scales) [n, frames] of the affine variant: labels 4, 5 turn clockwise
    and anticlockwise on screen, 6, 7 zoom in and out, about the middle frame; 0..3 stay upright."""
    motions = np.asarray(motions)
    u = np.linspace(-0.5, 0.5, frames)[None, :] if frames > 1 else np.zeros((1, 1))
    spin = np.select([motions == 4, motions == 5], [1.0, -1.0], 0.0)[:, None]
    zoom = np.select([motions == 6, motions == 7], [1.0, -1.0], 0.0)[:, None]
    lo, hi = AFFINE_SCALES
    return AFFINE_DEGREES * spin * u, (lo + hi) / 2 + (hi - lo) * zoom * u


def trajectories(motions, index, frames=20, size=64, jitter=1.0, variant="default", seed=0):
    """Top-left (x, y) positions of the digit, float [n, frames, 2] before rounding, in pixels.

    motions [n] are labels 0..7 and index [n] the global video indices that seed the randomness.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    motions = np.asarray(motions)
    if motions.size and (motions.min() < 0 or motions.max() > 7):
        raise ValueError(f"motion labels must be in 0..7, got {motions.min()}..{motions.max()}")
    scale = size / 64
    margin = size - digit_size(size)
    t = np.arange(frames, dtype=np.float64)[None, :, None]
    d = _DIRS[motions][:, None, :].astype(np.float64)         # (n, 1, 2)
    if variant in ("default", "affine"):
        start = _STARTS[motions][:, None, :] * margin
        pos = start + d * (margin / frames) * t
        if variant == "affine":                                  # turns and zooms: in the middle
            pos = np.where((motions >= 4)[:, None, None], margin / 2, pos)
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
    motions, index = np.asarray(motions), np.asarray(index)
    pos = trajectories(motions, index, frames, size, jitter, variant, seed)
    pos = np.clip(np.rint(pos), 0, margin)                       # (n, frames, 2): whole pixels
    x, y = pos.astype(np.intp).transpose(2, 0, 1)                # (n, frames) each
    spin = 15 * _uniform(seed, index, 11, (frames,)) if rotate else np.zeros((n, frames))  # [0, 15)
    if rotate:
        turned = _rotate(np.repeat(digits, frames, 0), spin.ravel())       # (n*frames, d, d)
        nn, xs, ys = np.arange(n * frames), x.ravel(), y.ravel()
    else:
        turned, nn, xs, ys = digits, np.arange(n)[:, None], x, y
    # frame[i, j] = digit[i - y, j - x]: pad the digit by the margin on every side, then each
    # frame is a size x size window of it starting at (margin - y, margin - x).
    padded = np.pad(turned, ((0, 0), (margin, margin), (margin, margin)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))
    out = windows[nn, margin - ys, margin - xs].reshape(n, frames, size, size)   # (a copy)
    if variant == "affine":                                      # turns and zooms: warped
        for k in np.array_split(np.flatnonzero(motions >= 4), max(1, n // 32)):
            angles, scales = affine_pose(motions[k], frames)
            out[k] = _warp(digits[k], pos[k], angles + spin[k], scales, size)
    return out


class MotionMNIST:
    """MotionMNIST videos: plain __len__/__getitem__ (a torch Dataset without importing torch).

    Items are (video uint8 [frames, size, size], motion_label int, digit_label int). `render`
    gives a whole batch at once, which is much faster than indexing one by one; `clips` gives it
    as the training and evaluation scripts take any data set: [n, T, C, S, S] and named labels.
    With colour=True each video's digit is drawn in one of 6 hues (HUES), its label "hue".
    """

    def __init__(self, split="train", mnist_dir=None, frames=20, size=64, jitter=1.0,
                 rotate=False, variant="default", seed=0, colour=False, download=None, log=print):
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not (isinstance(frames, int) and frames >= 1):
            raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
        if not (isinstance(size, int) and size >= 8):
            raise ValueError(f"size must be an integer >= 8, got {size!r}")
        if not jitter >= 0:
            raise ValueError(f"jitter must be >= 0 px, got {jitter!r}")
        images, labels, self.source = get_digits(mnist_dir, download, log)
        self.fingerprint = hashlib.sha1(images.tobytes() + labels.tobytes()).hexdigest()[:16]
        n_test = max(1, len(images) // 10)                        # held out: the last 10%
        first, last = {"train": (0, len(images) - n_test), "test": (len(images) - n_test,
                       len(images)), "all": (0, len(images))}[split]
        self.split, self.first_digit, self.n_digits = split, first, last - first
        self.frames, self.size, self.jitter, self.rotate = frames, size, jitter, rotate
        self.variant, self.seed, self.colour = variant, seed, colour
        self.channels = 3 if colour else 1
        self.label_names = ("motion", "content") + (("hue",) if colour else ())
        self.motion_names = motion_names(variant)
        self.labels = labels[first:last].astype(np.int64)
        self.images = images[first:last]                           # 28x28 originals
        d = digit_size(size)
        self.digits = self.images if d == 28 else np.clip(
            _resize(self.images.astype(np.float64), d) + 0.5, 0, 255).astype(np.uint8)

    def __len__(self):
        return self.n_digits * 8

    def _index(self, items):
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if items.size and (items.min() < -len(self) or items.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} videos")
        items = items % max(1, len(self))
        digit, motion = items // 8, items % 8
        return digit, motion, (self.first_digit + digit) * 8 + motion   # global index seeds it

    def render(self, items):
        """Videos uint8 [n, T, S, S] (grey, whatever the colour option), motion labels int64 [n],
        digit labels int64 [n]."""
        digit, motion, index = self._index(items)
        videos = render(self.digits[digit], motion, index, self.frames, self.size, self.jitter,
                        self.rotate, self.variant, self.seed)
        return videos, motion, self.labels[digit]

    def hues(self, items):
        """Each video's hue, an index into HUES, int64 [n] (seeded by the video)."""
        index = self._index(items)[2]
        return np.minimum((6 * _uniform(self.seed, index, 12, ())).astype(np.int64), 5)

    def clips(self, items):
        """Videos uint8 [n, T, C, S, S] and labels {"motion", "content" (the digit), "hue" in colour}."""
        videos, motion, digit = self.render(items)
        labels = {"motion": motion, "content": digit}
        if not self.colour:
            return videos[:, :, None], labels
        labels["hue"] = self.hues(items)
        colour = HUES[labels["hue"]][:, None, :, None, None]           # (n, 1, 3, 1, 1)
        return np.rint(videos[:, :, None] * colour).astype(np.uint8), labels

    def groups(self, items):
        """The digit of each item: videos of one digit share their content."""
        return self._index(items)[0] + self.first_digit

    def describe(self):
        return (f"MotionMNIST ({self.variant}{', colour' if self.colour else ''}, digits from "
                f"{self.source})")

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(i).__name__}")
        videos, motion, digit = self.render([i])
        return videos[0], int(motion[0]), int(digit[0])


class DataError(ValueError):
    """A video file that cannot be used; its message names the problem in one line."""


def read_videos(path):
    """Reads and checks a video file: (videos uint8 [N, T, H, W, C], {label name: int64 [N]}).

    The file is an .npz holding `videos`, uint8 [N, T, H, W] or [N, T, H, W, C] with C = 1 or 3,
    and optionally int arrays of labels [N] (`content`, `motion`, or any other name), which only
    evaluation reads. Raises DataError naming what is wrong.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- numpy and zipfile raise many kinds for a bad file
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}); save the videos "
                        "with numpy.savez(path, videos=...)") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not an .npz file; save the videos with "
                        "numpy.savez(path, videos=...)")
    with arrays:
        if "videos" not in arrays.files:
            raise DataError(f"{path}: no 'videos' array (found {sorted(arrays.files)}); save them "
                            "with numpy.savez(path, videos=...)")
        try:
            videos = arrays["videos"]
            labels = {k: arrays[k] for k in arrays.files if k != "videos"}
        except Exception as e:  # noqa: BLE001 -- as above
            raise DataError(f"{path}: an array cannot be read ({type(e).__name__}): the file is "
                            "corrupt or holds Python objects") from None
    return _checked(path, videos, labels)


def _checked(path, videos, labels):
    """The checks of read_videos, on arrays already loaded."""
    if videos.dtype != np.uint8:
        raise DataError(f"{path}: videos are {videos.dtype}, expected uint8 (0..255); convert "
                        "with np.clip(v * 255, 0, 255).astype(np.uint8) for floats in [0, 1]")
    if videos.ndim == 4:
        videos = videos[..., None]
    if videos.ndim != 5:
        raise DataError(f"{path}: videos have shape {list(videos.shape)}, expected [N, T, H, W] "
                        "or [N, T, H, W, C]")
    N, T, H, W, C = videos.shape
    if C not in (1, 3):
        raise DataError(f"{path}: videos have {C} channels (last axis), expected 1 or 3")
    if N < 2 or T < 2:
        raise DataError(f"{path}: {N} videos of {T} frames; at least 2 videos of 2 frames are needed")
    if min(H, W) < 16:
        raise DataError(f"{path}: frames are {H}x{W} px, at least 16x16 are needed")
    out = {}
    for name, a in labels.items():
        if a.ndim != 1 or len(a) != N:
            raise DataError(f"{path}: labels '{name}' have shape {list(a.shape)}, expected [{N}], "
                            "one per video")
        if a.dtype.kind not in "iub":
            raise DataError(f"{path}: labels '{name}' are {a.dtype}, expected integers")
        out[name] = a.astype(np.int64)
    return videos, out


def square(videos, size):
    """uint8 [N, T, H, W, C] -> uint8 [N, T, C, size, size]: centre-cropped to a square and
    resized with torch (area when shrinking, bilinear when enlarging), 256 videos at a time."""
    import torch
    import torch.nn.functional as F
    N, T, H, W, C = videos.shape
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    out = np.empty((N, T, C, size, size), np.uint8)
    for i in range(0, N, 256):
        x = torch.from_numpy(np.ascontiguousarray(videos[i:i + 256, :, top:top + side, left:left + side]))
        x = x.flatten(0, 1).permute(0, 3, 1, 2).float()          # (n*T, C, side, side)
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="area" if side > size else "bilinear",
                              align_corners=None if side > size else False)
        out[i:i + 256] = x.round().clamp(0, 255).to(torch.uint8).view(-1, T, C, size, size).numpy()
    return out


def holdout_items(n, fraction=0.1, seed=0):
    """The held-out videos of a file of n: a fixed, seeded fraction (at least 1, at most n - 1)."""
    k = min(n - 1, max(1, int(round(fraction * n))))
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def identity_labels(labels):
    """The names of labels that say who, not what: more than 100 classes, or fewer than 5 videos a
    class (a character or a clip id). They are not probed or judged; they group the probes."""
    many = lambda y: len(np.unique(y)) > 100 or len(y) < 5 * len(np.unique(y))
    return tuple(k for k, y in labels.items() if many(y))


def file_split(path, split, n):
    """The held-out videos of a file's own `split` array [n] (0 train, 1 test); DataError when it
    is not one 0 or 1 a video with both present."""
    values = np.unique(split)
    if not set(values.tolist()) <= {0, 1}:
        raise DataError(f"{path}: 'split' holds {values[:6].tolist()}; it must be 0 (train) or 1 "
                        "(test) for every video")
    test = np.flatnonzero(split == 1)
    if len(test) in (0, n):
        raise DataError(f"{path}: 'split' puts {'no' if len(test) == 0 else 'every'} video in the "
                        f"test split; it needs at least one training (0) and one test (1) video")
    return test


class VideoFile:
    """A user's videos from an .npz file (read_videos), as the scripts take any data set: frames
    cropped and resized to size x size, split into training and held-out videos: the file's own
    `split` array (0 train, 1 test) where it has one, else a seeded 10%.

    clips(items, starts=None) gives videos uint8 [n, frames, C, S, S] (windows of `frames`
    frames from `starts`, or from the first frame) and the file's labels; label_names are those
    to probe and judge (not identities: identity_labels), groups(items) who shares content.
    """

    def __init__(self, path, split="train", size=64, frames=None, holdout=None, log=print):
        videos, labels = read_videos(path)
        N, T = videos.shape[:2]
        self.path, self.source, self.split = os.path.abspath(path), os.path.abspath(path), split
        self.fingerprint = _fingerprint(videos, labels)
        own = labels.pop("split", None)                        # the file's split, not a label
        if holdout is not None:                                # the run's, stored in its checkpoint
            self.holdout = np.asarray(holdout, np.int64)
        else:
            self.holdout = holdout_items(N) if own is None else file_split(path, own, N)
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if self.holdout.size and (self.holdout.min() < 0 or self.holdout.max() >= N):
            raise DataError(f"{path}: the held-out videos stored with the run do not fit its {N} "
                            "videos: the file changed since")
        keep = {"all": np.arange(N), "test": self.holdout,
                "train": np.setdiff1d(np.arange(N), self.holdout)}[split]
        self.file_frames, self.frames = T, frames or T
        if not 2 <= self.frames <= T:
            raise DataError(f"{path}: windows of {self.frames} frames asked for, the videos have "
                            f"{T}; use --frames between 2 and {T}")
        self.size, self.channels, self.items = size, videos.shape[-1], keep
        self.videos = square(videos[keep], size)                 # (n, T, C, S, S) uint8
        self.labels = {k: v[keep] for k, v in labels.items()}
        ids = identity_labels(labels)
        self.label_names = tuple(k for k in self.labels if k not in ids)
        # the coarsest identity groups the probes: one character's videos on one side only
        self.identity = min(ids, key=lambda k: len(np.unique(labels[k]))) if ids else None
        self.motion_names = None
        log(f"data: {path}: {N} videos of {T} frames {videos.shape[2]}x{videos.shape[3]}x"
            f"{self.channels} -> {size}x{size}; {len(keep)} in split '{split}'"
            + (" (the file's own split)" if own is not None else ""))

    def __len__(self):
        return len(self.videos)

    def clips(self, items, starts=None):
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if self.frames == self.file_frames:
            videos = self.videos[items]
        else:
            starts = np.zeros(len(items), np.int64) if starts is None else np.asarray(starts)
            t = starts[:, None] + np.arange(self.frames)         # (n, frames)
            videos = self.videos[items[:, None], t]
        return videos, {k: v[items] for k, v in self.labels.items()}

    def groups(self, items):
        """Who shares content: the identity label (e.g. a character) where the file has one, else
        each video its own group."""
        items = np.asarray(items, dtype=np.int64)
        return self.labels[self.identity][items] if self.identity else items

    def describe(self):
        return f"{self.path} ({self.channels} channel{'s' if self.channels > 1 else ''})"


def _fingerprint(videos, labels):
    h = hashlib.sha1(videos.tobytes())
    for k in sorted(labels):
        h.update(k.encode() + labels[k].tobytes())
    return h.hexdigest()[:16]


def open_dataset(spec, split, size, frames=None, log=print):
    """The data set a spec names (what a checkpoint stores of its data), at the model's frame size:
    {"kind": "motionmnist", "mnist_dir", "variant", "fingerprint", "source"} or {"kind": "file",
    "path", "fingerprint", "holdout", "frames"}. A fingerprint in the spec must match the data
    found: DataError otherwise, naming what to pass."""
    if spec["kind"] == "file":
        ds = VideoFile(spec["path"], split, size, spec.get("frames") or frames, spec.get("holdout"), log)
        what = f"the video file {spec['path']}"
    else:
        folder = spec.get("mnist_dir")
        if folder and not os.path.isdir(folder):   # moved since training: found as usual
            log(f"data: {folder} (the run's MNIST folder) is gone; looking for MNIST as usual")
            folder = None
        ds = MotionMNIST(split, folder, frames or 20, size, variant=spec.get("variant", "default"),
                         colour=spec.get("colour", False), log=log)
        what = f"MotionMNIST with digits from {spec.get('source')}"
    if spec.get("fingerprint") not in (None, ds.fingerprint):
        hint = ("pass --data FILE with the same videos" if spec["kind"] == "file" else
                "pass --mnist-dir DIR with the MNIST test-set files it used")
        raise DataError(f"the run was trained on {what}, but the data found now ({ds.source}) is "
                        f"different (fingerprint {ds.fingerprint}, the run's {spec['fingerprint']}): {hint}")
    return ds


def spec_of(ds, mnist_dir=None):
    """What a checkpoint stores to find ds again (open_dataset)."""
    if isinstance(ds, VideoFile):
        return {"kind": "file", "path": ds.path, "fingerprint": ds.fingerprint,
                "holdout": ds.holdout.tolist(), "frames": ds.frames}
    return {"kind": "motionmnist", "mnist_dir": os.path.abspath(mnist_dir) if mnist_dir else None,
            "variant": ds.variant, "colour": ds.colour, "fingerprint": ds.fingerprint,
            "source": ds.source}


# ----------------------------------------------------------------------------- Sprites

# Sprites (Li & Mandt, "Disentangled Sequential Autoencoder", ICML 2018), built as the authors'
# random_character.py and frame_to_npy.py build it (github.com/YingzhenLi/Sprites): 1,296
# characters, each of 3 actions seen from 3 directions, 8 frames of 64x64 RGB.
SPRITE_LAYERS = ("body", "bottomwear", "topwear", "hair")     # composited in this order, then shoes
SPRITE_ACTIONS = ("walk", "spellcard", "slash")               # motion = 3 * action + direction
SPRITE_DIRECTIONS = ("front", "left", "right")
SPRITE_MOTIONS = tuple(f"{a} {d}" for a in SPRITE_ACTIONS for d in SPRITE_DIRECTIONS)
# first sheet cell of each action by direction, and the 8 frames' cells from it (a sheet is 13
# cells wide: cell = row * 13 + column); the authors repeat frames to make every action 8 long
_SPRITE_STARTS = {"walk": (131, 118, 144), "spellcard": (26, 13, 39), "slash": (182, 169, 195)}
_SPRITE_STEPS = {"walk": (7, 0, 1, 2, 3, 4, 5, 6), "spellcard": (0, 1, 2, 3, 4, 5, 4, 6),
                 "slash": (0, 1, 2, 3, 4, 5, 4, 0)}
SPRITE_SHEET = (1344, 832)     # pixels, rows x columns: 21 x 13 cells of 64 x 64
SPRITE_SPLIT_SEED, SPRITE_TRAIN = 423, 1000   # frame_to_npy.py: the first 1,000 characters train


def sprite_cells():
    """The sheet cells of every motion's 8 frames, int [9, 8], motion = 3 * action + direction."""
    return np.array([[s + k for k in _SPRITE_STEPS[a]] for a in SPRITE_ACTIONS
                     for s in _SPRITE_STARTS[a]])


def sprite_split():
    """The authors' split: int [1296], 0 for the 1,000 training characters, 1 for the 296 test."""
    rng = np.random.RandomState(SPRITE_SPLIT_SEED)             # numpy.random.seed(423), as theirs
    order = rng.permutation(6 ** 4)
    split = np.ones(6 ** 4, np.int64)
    split[order[:SPRITE_TRAIN]] = 0
    return split


def _read_sheet(path, cells):
    """One layer sheet's cells as RGBA, uint8 [len(cells), 64, 64, 4] (Pillow, imported here)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            rgba = np.asarray(im.convert("RGBA"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable PNG sheet ({e})") from None
    if rgba.shape[:2] != SPRITE_SHEET:
        raise DataError(f"{path}: a sheet is {SPRITE_SHEET[1]}x{SPRITE_SHEET[0]} px (13 x 21 cells "
                        f"of 64 x 64), this one is {rgba.shape[1]}x{rgba.shape[0]}")
    grid = rgba.reshape(21, 64, 13, 64, 4).transpose(0, 2, 1, 3, 4).reshape(-1, 64, 64, 4)
    return grid[cells]


def _over(dst, src):
    """src RGBA uint8 [..., 4] alpha-composited over opaque dst RGB uint8 [..., 3], with Pillow's
    integer arithmetic (Image.alpha_composite, AlphaComposite.c), so the bytes are the authors'."""
    a = src[..., 3:].astype(np.uint32)
    # over an opaque destination Pillow's coefficients reduce to a * 128 and (255 - a) * 128
    # (PRECISION_BITS = 7); SHIFTFORDIV255(x) = ((x >> 8) + x) >> 8
    tmp = (src[..., :3] * a + dst * (255 - a)) * 128 + (0x80 << 7)
    out = ((((tmp >> 8) + tmp) >> 8) >> 7).astype(np.uint8)
    return np.where(a > 0, out, dst)                            # Pillow copies dst where a == 0


def build_sprites(folder, characters=None, log=print):
    """Sprites from the layer sheets in `folder` (a clone of github.com/YingzhenLi/Sprites).

    Returns (videos uint8 [9 n, 8, 64, 64, 3], labels {motion, body, bottom, top, hair,
    character, split}: int64 [9 n]), video i being character characters[i // 9] doing motion
    i % 9; characters: the character numbers ((body * 6 + bottom) * 6 + top) * 6 + hair, default
    all 1,296. Each character is its layers body, bottomwear, topwear, hair, then shoes/1.png,
    alpha-composited over opaque black; split is the authors' (sprite_split). DataError names
    what is missing when the folder is not the sheets.
    """
    chars = np.arange(6 ** 4) if characters is None else np.asarray(characters, np.int64).reshape(-1)
    if chars.size == 0 or chars.min() < 0 or chars.max() >= 6 ** 4:
        raise DataError(f"characters must be numbers in 0..{6 ** 4 - 1}")
    need = [os.path.join(layer, f"{k}.png") for layer in SPRITE_LAYERS for k in range(6)]
    missing = [p for p in need + ["shoes/1.png"] if not os.path.isfile(os.path.join(folder, p))]
    if missing:
        raise DataError(f"{folder}: not the Sprites sheets ({len(missing)} of the layer files are "
                        f"missing, e.g. {missing[0]}); clone them with: git clone "
                        "https://github.com/YingzhenLi/Sprites")
    cells, t0 = sprite_cells(), time.perf_counter()
    used, where = np.unique(cells, return_inverse=True)         # 63 distinct cells
    digits = np.stack([chars // 216, chars // 36 % 6, chars // 6 % 6, chars % 6], 1)   # (n, 4)
    frames = np.zeros((len(chars), len(used) * 64 * 64, 3), np.uint8)   # opaque black, flat pixels
    for j, layer in enumerate(SPRITE_LAYERS + ("shoes",)):
        for k in np.unique(digits[:, j]) if j < 4 else [1]:
            sheet = _read_sheet(os.path.join(folder, layer, f"{k}.png"), used).reshape(-1, 4)
            px = np.flatnonzero(sheet[:, 3])                    # a layer covers few pixels: only those
            rows = np.flatnonzero(digits[:, j] == k) if j < 4 else np.arange(len(chars))
            for r in np.array_split(rows, -(-len(rows) // 256)):   # (memory: uint32 temporaries)
                frames[r[:, None], px] = _over(frames[r[:, None], px], sheet[px])
    frames = frames.reshape(len(chars), len(used), 64, 64, 3)
    videos = frames[:, where.reshape(cells.shape)].reshape(-1, 8, 64, 64, 3)   # (9 n, 8, 64, 64, 3)
    labels = {"motion": np.tile(np.arange(9), len(chars)),
              **{name: np.repeat(digits[:, j], 9) for j, name in enumerate(("body", "bottom", "top", "hair"))},
              "character": np.repeat(chars, 9), "split": np.repeat(sprite_split()[chars], 9)}
    log(f"data: Sprites from {folder}: {len(videos)} videos of 8 frames 64x64x3 "
        f"({len(chars)} characters) in {time.perf_counter() - t0:.1f} s")
    return videos, labels


# ----------------------------------------------------------------------------- command line

def preview(path, ds, frames_shown=None, title=None):
    """Saves a picture: one row per motion (the split's 8th digit's videos), frames across, labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    videos, _ = ds.clips((np.arange(8) + 8 * 7) % len(ds))
    videos = videos.transpose(0, 1, 3, 4, 2)                     # (8, T, S, S, C) for imshow
    T = ds.frames if frames_shown is None else min(frames_shown, ds.frames)
    fig, axes = plt.subplots(8, T, figsize=(T * 0.8, 8 * 0.85), squeeze=False)
    for m in range(8):
        for t in range(T):
            ax = axes[m, t]
            ax.imshow(videos[m, t] if ds.channels == 3 else videos[m, t, ..., 0], cmap="gray",
                      vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if m == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[m, 0].set_ylabel(f"{m}: {ds.motion_names[m]}", fontsize=9, rotation=0, ha="right", va="center")
    # not describe(): a figure should not carry the folder the digits were read from
    fig.suptitle(title or f"MotionMNIST ({ds.variant}{', colour' if ds.colour else ''})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def export(path, ds, count):
    """Writes the first `count` videos of ds as a video file (read_videos' format): videos uint8
    [N, T, S, S] (or [N, T, S, S, 3] in colour), content and motion labels (and hue in colour)."""
    n = min(count, len(ds))
    parts = [ds.clips(c) for c in np.array_split(np.arange(n), max(1, n // 4096))]
    videos = np.concatenate([v for v, _ in parts])               # (n, T, C, S, S)
    videos = videos[:, :, 0] if ds.channels == 1 else videos.transpose(0, 1, 3, 4, 2)
    return write_videos(path, videos, {k: np.concatenate([lab[k] for _, lab in parts]) for k in parts[0][1]})


def write_videos(path, videos, labels):
    """Writes videos and int labels as a video file, atomically (a temporary file, then a rename):
    an interrupted export never leaves a half-written file. Returns (shape, label names)."""
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, videos=videos, **labels)
    os.replace(tmp, path)
    return videos.shape, sorted(labels)


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
    p.add_argument("--variant", default="default", choices=VARIANTS,
                   help="default motions; hard: random speed and start; affine: turns and zooms")
    p.add_argument("--colour", action="store_true", help="draw each digit in one of 6 hues "
                   "(labels: content = the digit, hue)")
    p.add_argument("--rotate", action="store_true", help="rotate the digit at every frame")
    p.add_argument("--frames", type=int, default=20, help="frames per video (default 20)")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--sprites", metavar="SHEETS", help="with --export: build the Sprites benchmark "
                   "(all 11,664 videos, the authors' split as `split`) from a clone of "
                   "github.com/YingzhenLi/Sprites")
    p.add_argument("--bench", action="store_true", help="time batch rendering")
    p.add_argument("--download", action="store_true", help="download MNIST into the cache "
                   "folder, or into --mnist-dir when given")
    args = p.parse_args(argv)
    if not (args.preview or args.export or args.bench or args.download):
        p.error("nothing to do: give --preview FILE.png, --export FILE.npz, --bench or --download")
    if args.sprites and (args.preview or not args.export):
        p.error("--sprites SHEETS goes with --export FILE.npz (and no --preview)")
    try:
        if args.sprites:
            shape, names = write_videos(args.export, *build_sprites(args.sprites))
            print(f"wrote {args.export}: videos uint8 {list(shape)}, labels {', '.join(names)}")
            return 0
        if args.download:
            download_mnist(args.mnist_dir or cache_dir())
        if args.bench:
            bench()
        if args.preview or args.export:
            ds = MotionMNIST(args.split, args.mnist_dir, args.frames, args.size,
                             rotate=args.rotate, variant=args.variant, seed=args.seed,
                             colour=args.colour)
        if args.preview:
            preview(args.preview, ds)
            print(f"wrote {args.preview}")
        if args.export:
            if args.count < 1:
                p.error(f"--count must be >= 1, got {args.count}")
            shape, names = export(args.export, ds, args.count)
            print(f"wrote {args.export}: videos uint8 {list(shape)}, labels {', '.join(names)}")
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
