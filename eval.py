"""Evaluates an MDBiGAN checkpoint on the held-out MotionMNIST digits (docs/model.md, "How results
are judged").

Usage (inside the README's .venv):
    python eval.py runs/cpu                               # a run folder or its ckpt.pt; writes runs/cpu/eval/
    python eval.py CKPT --out-dir DIR --mnist-dir DIR --device cuda
    python eval.py CKPT --variant hard                    # the random-speed-and-start variant

The model is rebuilt from the checkpoint alone. Writes to --out-dir (default: eval/ beside the
checkpoint, or eval_hard/ for --variant hard):
  metrics.json    every number below (fractions in [0, 1], entropies in bits, distances and errors
                  in pixels of the model's frames; a metric that does not apply is null)
  fig4_pca.png, fig4_tsne.png   z_M of held-out videos by motion (the paper's Fig. 4)
  fig5_recon.png  originals, G(random z_C, E(x)) and G(E_C(x), E(x)) (the paper's Fig. 5)
  swap.png, samples.png          motion transfer, and videos sampled from the priors
  samples.gif, recon.gif, swap.gif   the same, moving
Judges, fitted on real training-split videos: the digit judge is a small CNN over the whole frame
with a global max-pool, trained with sub-pixel shifts (translation-tolerant), cached on disk
(~/.cache/mdbigan/judges, keyed by the digits, frame size, variant and JUDGE_VERSION); the motion
judge a logistic regression on centre-of-mass paths. Their accuracy on real held-out videos is
reported as their ceiling. Generation metrics follow C-DSVAE / S3VAE (judge accuracy, IS, H(y|x),
H(y)), with a Frechet distance in the digit judge's feature space.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from joblib import Parallel, delayed
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import data
from mdbigan import MDBiGAN, load_checkpoint

# metric -> how to read it: which way is good, and its target or baseline (printed beside it)
GUIDE = {
    "motion_nmi": "higher is better; >= 0.95; raw pixels: pixel_nmi",
    "motion_ari": "", "motion_acc": "",
    "pixel_nmi": "the baseline: k-means on raw pixels", "pixel_ari": "", "pixel_acc": "",
    "probe_motion_acc": "higher is better; >= 0.98",
    "probe_digit_acc": "lower is better (digit leaking into z_M); chance 0.10; <= 0.15",
    "pixel_probe_motion_acc": "the baseline: a probe on raw pixels",
    "content_probe_digit_acc": "higher is better (z_C holds the digit)",
    "content_probe_motion_acc": "lower is better (motion in z_C); chance 0.125",
    "recon_motion_err_px": "lower is better: G(E_C(x), E(x))",
    "recon_motion_err_px_random_c": "lower is better: G(random z_C, E(x))",
    "recon_digit_acc": "higher is better; >= 0.85; ceiling judge_digit_acc",
    "swap_digit_acc": "higher is better: G(E_C(A), E(B)) reads as A's digit",
    "swap_motion_acc": "higher is better: ... moves as B; >= 0.95",
    "sample_consistency": "higher is better: one digit over a sampled video's frames; >= 0.90",
    "sample_confidence": "higher is better; real frames: judge_confidence; >= 0.90",
    "sample_is": "higher is better; at most 10",
    "sample_h_y_given_x": "lower is better (bits): each sample is one clear digit",
    "sample_h_y": "higher is better (bits): every digit appears; at most 3.32",
    "sample_fd": "lower is better; the floor: real_fd",
    "real_fd": "two halves of real held-out frames",
    "random_c_consistency": "higher is better: G(random z_C, E(x)); >= 0.90",
    "random_c_confidence": "higher is better; >= 0.90",
    "random_c_motion_acc": "higher is better: G(random z_C, E(x)) moves as x",
    "fix_content_digit_acc": "higher is better: G(E_C(x), sampled z_M) reads as x's digit",
    "fix_motion_motion_acc": "higher is better: G(sampled z_C, E(x)) moves as x",
    "sample_speed_px": "px/frame, first to last frame, of sampled videos; within 15% of real",
    "real_speed_px": "px/frame, first to last frame, of real held-out videos",
    "sample_paths_in_range": "higher is better: sampled paths inside the real positions; >= 0.95",
    "sample_paths_in_range_1px": "the same, the box widened by 1 px (the data's jitter)",
    "recon_paths_in_range": "the strict box for G(E_C(x), E(x)): what sub-pixel overshoot costs",
    "judge_digit_acc": "the digit judge on real held-out frames (its ceiling)",
    "judge_confidence": "the digit judge's mean top probability on real frames",
    "real_consistency": "one digit over a real video's frames: the consistencies' ceiling",
    "judge_motion_acc": "the motion judge on real held-out videos",
}
KEYS = list(GUIDE)
JUDGE_VERSION = 2     # bump when DigitJudge or its training changes: cached judges are then refitted
JUDGE_SIZE = 32       # frames are pooled (or upsampled) to 32x32 for the judge: one net for any size


# ----------------------------------------------------------------------------- metric functions

def cluster_acc(labels, clusters):
    """Accuracy of the best one-to-one matching of clusters to labels (Hungarian)."""
    from scipy.optimize import linear_sum_assignment
    k = max(labels.max(), clusters.max()) + 1
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(-counts)
    return counts[rows, cols].sum() / len(labels)


def cluster_scores(features, labels, k=8, seed=0):
    """k-means on features [N, D]: (NMI, ARI, cluster accuracy) against labels [N]."""
    pred = KMeans(k, n_init=10, random_state=seed).fit_predict(features)
    # clipped: sklearn can return 1.0000000000000002 for a perfect clustering
    return (min(1.0, normalized_mutual_info_score(labels, pred)),
            min(1.0, adjusted_rand_score(labels, pred)), cluster_acc(labels, pred))


def probe(features, labels, groups):
    """Linear probe: fitted on the first half of the digits (groups), scored on the rest."""
    fit = groups < np.median(groups)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(features[fit], labels[fit])
    return float((clf.predict(features[~fit]) == labels[~fit]).mean())


def centre_of_mass(frames):
    """frames [..., S, S] non-negative (uint8 or float) -> (x, y) centre of mass [..., 2] in pixels;
    in chunks, so that 8,000 videos of 64x64 never become one float64 array of 5 GB."""
    S = frames.shape[-1]
    flat = frames.reshape(-1, S * S)
    ys, xs = np.divmod(np.arange(S * S, dtype=np.float32), S)
    out = np.empty((len(flat), 2))
    for i in range(0, len(flat), 16384):
        w = flat[i:i + 16384].astype(np.float32)
        out[i:i + 16384] = np.stack([w @ xs, w @ ys], 1) / (w.sum(1, keepdims=True) + 1e-8)
    return out.reshape(*frames.shape[:-2], 2)


def motion_error(real, fake):
    """Mean distance in pixels between the centres of mass of real and fake frames [N, T, S, S]."""
    return float(np.linalg.norm(centre_of_mass(real) - centre_of_mass(fake), axis=-1).mean())


def trajectory_features(videos):
    """Motion judge features: centre-of-mass path [N, T, 2], absolute and relative to its start."""
    com = centre_of_mass(videos) / videos.shape[-1]
    return np.concatenate([com.reshape(len(videos), -1),
                           (com - com[:, :1]).reshape(len(videos), -1)], 1)


def speed_px(videos):
    """Mean speed of videos [N, T, S, S] in px/frame: the centre of mass's distance from the first
    frame to the last over T - 1. (Frame to frame, the data's per-frame jitter of N(0, 1) px at
    64x64 would count as motion: 1.40 px/frame for real videos at 32x32 that travel 1.08.)"""
    com = centre_of_mass(videos)
    return float((np.linalg.norm(com[:, -1] - com[:, 0], axis=-1) / (com.shape[1] - 1)).mean())


def paths_in_range(videos, real, tol=0.0):
    """Fraction of videos whose centre of mass stays, at every frame, inside the box of the
    centres of mass of the real videos, widened by tol pixels on each side."""
    com, ref = centre_of_mass(videos), centre_of_mass(real).reshape(-1, 2)
    inside = (com >= ref.min(0) - tol) & (com <= ref.max(0) + tol)   # (N, T, 2)
    return float(inside.all((1, 2)).mean())


def label_stats(probs):
    """probs [N, T, 10] of the digit judge per frame -> (consistency: one label over all T frames,
    confidence: mean top probability, IS, H(y|x) and H(y) in bits over videos, whose p(y|x) is
    the mean over their frames)."""
    labels = probs.argmax(-1)
    p = probs.mean(1)                                            # (N, 10) per video
    marginal = p.mean(0)
    ent = lambda q: -(q * np.log2(np.clip(q, 1e-12, 1))).sum(-1)
    kl = (p * (np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(marginal, 1e-12, 1)))).sum(1)
    return (float((labels == labels[:, :1]).all(1).mean()), float(probs.max(-1).mean()),
            float(np.exp(kl.mean())), float(ent(p).mean()), float(ent(marginal)))


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    from scipy import linalg
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():   # a singular product (dead features) is fine to the precision used
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(ca @ cb)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root.real))


# ----------------------------------------------------------------------------- the digit judge

class Blur(nn.Module):
    """A fixed [1, 2, 1]^2 / 16 low-pass per channel: before a stride-2 conv it keeps the judge
    from aliasing (Zhang 2019), else its label flips with the digit's position mod 4."""

    def forward(self, x):
        k = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
        k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


class DigitJudge(nn.Module):
    """Whole frame -> digit logits: convs, then a global max-pool, so that where the digit is does
    not matter; the pooled 128 numbers are the features of the Frechet distance."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for c, stride in ((16, 1), (32, 2), (64, 2), (128, 1)):   # receptive field 17 px: a digit
            layers += [Blur()] if stride == 2 else []
            layers += [nn.Conv2d(c_in, c, 3, stride, 1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.net, self.fc = nn.Sequential(*layers), nn.Linear(128, 10)

    def features(self, x):                                       # x: (N, 1, S, S) in [0, 1]
        x = F.adaptive_avg_pool2d(x, JUDGE_SIZE) if x.shape[-1] >= JUDGE_SIZE else \
            F.interpolate(x, JUDGE_SIZE, mode="bilinear", align_corners=False)
        return self.net(x).amax((2, 3))                          # (N, 128)

    def forward(self, x):
        return self.fc(self.features(x))


def shifted(x, gen, max_px=1.5):
    """x (N, 1, S, S) moved by a random (sub-)pixel amount in [-max_px, max_px] per axis, bilinearly."""
    N, S = x.shape[0], x.shape[-1]
    shift = (torch.rand(N, 1, 1, 2, generator=gen) * 2 - 1) * max_px * 2 / S
    c = (torch.arange(S, dtype=x.dtype) * 2 + 1) / S - 1
    base = torch.stack(torch.broadcast_tensors(c[None, :], c[:, None]), -1)     # (S, S, 2)
    return F.grid_sample(x, base - shift, align_corners=False)


def fit_judge(train_set, frames, seed=0, epochs=5, device="cpu", log=print):
    """Trains the digit judge on `frames` frames of real training-split videos (two per video)."""
    rng, T, S = np.random.default_rng(seed), train_set.frames, train_set.size
    items = rng.choice(len(train_set), frames // 2, replace=frames // 2 > len(train_set))
    xs, ys = [], []
    for chunk in np.array_split(items, max(1, len(items) // 1000)):  # (memory: 1,000 videos at a time)
        v, _, d = train_set.render(chunk)
        t = rng.integers(0, T, (len(chunk), 2))
        xs.append(v[np.arange(len(chunk))[:, None], t].reshape(-1, S, S))
        ys.append(np.repeat(d, 2))
    x = torch.from_numpy(np.concatenate(xs)).float().div(255).unsqueeze(1)
    y = torch.from_numpy(np.concatenate(ys)).long()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = DigitJudge().to(device)
    opt = torch.optim.Adam(judge.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * -(-len(x) // 256))
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 256):
            b = perm[i:i + 256]
            loss = F.cross_entropy(judge(shifted(x[b], gen).to(device)), y[b].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(f"digit judge: epoch {epoch + 1}/{epochs}, last batch loss {loss.item():.3f}")
    return judge.eval()


def load_or_fit_judge(train_set, frames, cache, device="cpu", log=print):
    """The cached judge for these digits, frame size and variant; fitted and saved if absent."""
    h = hashlib.sha1(train_set.images.tobytes() + train_set.labels.tobytes())
    h.update(f"{train_set.size} {train_set.variant} {frames} v{JUDGE_VERSION}".encode())
    path = os.path.join(cache, f"judge_{h.hexdigest()[:16]}.pt")
    judge = DigitJudge()
    if os.path.isfile(path):
        try:
            judge.load_state_dict(torch.load(path, weights_only=True))
            return judge.to(device).eval(), path
        except (RuntimeError, OSError, ValueError):
            log(f"digit judge: {path} unreadable, fitting it again")
    judge = fit_judge(train_set, frames, device=device, log=log)
    try:
        os.makedirs(cache, exist_ok=True)
        torch.save({k: v.cpu() for k, v in judge.state_dict().items()}, path + ".tmp")
        os.replace(path + ".tmp", path)
    except OSError as e:
        log(f"digit judge: not cached ({e.strerror}); it will be fitted again next time")
    return judge, path


@torch.no_grad()
def judge_videos(judge, videos):
    """videos [N, T, S, S] in [0, 1] (or uint8) -> (probabilities [N, T, 10], features [N * T, 128])."""
    N, T, S = videos.shape[:3]
    flat = torch.as_tensor(videos).reshape(-1, 1, S, S)
    device, scale = next(judge.parameters()).device, 255.0 if videos.dtype == np.uint8 else 1.0
    feats = torch.cat([judge.features(flat[i:i + 4096].to(device).float() / scale)
                       for i in range(0, len(flat), 4096)])
    return judge.fc(feats).softmax(-1).view(N, T, 10).cpu().numpy(), feats.cpu().numpy()


# ----------------------------------------------------------------------------- the run

@torch.no_grad()
def batched(fn, *arrays, batch=256, device="cpu"):
    """Runs fn on batches of arrays (moved to device) -> numpy, concatenated."""
    outs = []
    for i in range(0, len(arrays[0]), batch):
        args = [torch.as_tensor(a[i:i + batch]).to(device) for a in arrays]
        outs.append(fn(*args).float().cpu().numpy())
    return np.concatenate(outs)


def to_model(v):
    return v.float().unsqueeze(2) / 255                          # (B, T, 1, S, S) in [0, 1]


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an MDBiGAN checkpoint.", allow_abbrev=False)
    p.add_argument("ckpt", help="checkpoint written by train.py (OUT_DIR/ckpt.pt, or OUT_DIR)")
    p.add_argument("--out-dir", help="where figures and metrics.json go (default: beside ckpt)")
    p.add_argument("--mnist-dir", help="folder with the MNIST test-set IDX files")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when present)")
    p.add_argument("--variant", choices=["default", "hard"],
                   help="MotionMNIST variant (default: the one the checkpoint trained on)")
    p.add_argument("--max-videos", type=int, default=0, help="use only this many held-out videos "
                   "(0 = all 8,000)")
    p.add_argument("--judge-frames", type=int, default=30000, help="real frames the digit judge "
                   "is fitted on, once (default 30,000)")
    p.add_argument("--judge-dir", default=os.path.join(os.path.dirname(data.cache_dir()), "judges"),
                   help="where fitted digit judges are cached (default ~/.cache/mdbigan/judges)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled codes and k-means")
    args = p.parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{cat.__name__}: {msg}\n"   # no source line
    for k in ("max_videos", "judge_frames"):
        if getattr(args, k) < (0 if k == "max_videos" else 100):
            p.error(f"--{k.replace('_', '-')} is too small: {getattr(args, k)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    t0 = time.perf_counter()

    def stage(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    try:
        ck = load_checkpoint(args.ckpt)
        model = MDBiGAN.from_checkpoint(ck, args.device)                # (read once)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = model.cfg
    variant = args.variant or ck["args"].get("variant", "default")
    run_dir = args.ckpt if os.path.isdir(args.ckpt) else os.path.dirname(os.path.abspath(args.ckpt))
    out = args.out_dir or os.path.join(run_dir, "eval" if variant == "default" else "eval_" + variant)
    try:
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, ".write_test"), "w").close()
        os.remove(os.path.join(out, ".write_test"))
    except OSError as e:
        print(f"error: cannot write to output folder {out!r} ({e.strerror}); choose another with "
              "--out-dir", file=sys.stderr)
        return 2
    try:
        test = data.MotionMNIST("test", args.mnist_dir, cfg.frames, cfg.size, variant=variant)
        train_set = data.MotionMNIST("train", args.mnist_dir, cfg.frames, cfg.size, variant=variant,
                                     log=lambda *a: None)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    stage(f"checkpoint {args.ckpt} (step {ck.get('step')}, {cfg.size}x{cfg.size}, T={cfg.frames}, "
          f"{'where/what' if cfg.structured else 'conv'} family); data {test.source}, {variant} variant")

    n = len(test) if args.max_videos <= 0 else min(args.max_videos, len(test))
    items = np.arange(len(test)) if n == len(test) else np.sort(rng.choice(len(test), n, replace=False))
    videos, motions, digits = test.render(items)                 # (N, T, S, S) uint8, kept so
    dev = args.device
    z_m = batched(lambda v: model.encode_motion(to_model(v)), videos, device=dev)  # (N, T, dz_m)
    z_c = batched(lambda v: model.encode_content(to_model(v)), videos, device=dev)
    stage(f"encoded {n} held-out videos")
    m = dict.fromkeys(KEYS)
    m.update(code_metrics(z_m, z_c, videos, motions, digits, items // 8, rng, args.seed))
    stage("k-means and linear probes on z_M, z_C and raw pixels")

    judge, path = load_or_fit_judge(train_set, args.judge_frames, args.judge_dir, dev, log=stage)
    tv, tm, _ = train_set.render(rng.choice(len(train_set), min(8000, len(train_set)), replace=False))
    motion_judge = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    motion_judge.fit(trajectory_features(tv), tm)
    k = min(n, 2000)                                             # videos per generated set
    idx = rng.choice(n, k, replace=False)
    probs, feats = judge_videos(judge, videos[idx])
    m["judge_digit_acc"] = float((probs.argmax(-1) == digits[idx, None]).mean())
    m["judge_confidence"] = float(probs.max(-1).mean())
    m["real_consistency"] = label_stats(probs)[0]
    m["judge_motion_acc"] = float((motion_judge.predict(trajectory_features(videos)) == motions).mean())
    rest = np.setdiff1d(np.arange(n), idx)[:k] if n >= 2 * k else idx[k // 2:]
    m["real_fd"] = frechet_distance(feats if n >= 2 * k else feats[:len(feats) // 2],
                                    judge_videos(judge, videos[rest])[1])
    m["real_speed_px"] = speed_px(videos)
    stage(f"judges ({path}): digit {m['judge_digit_acc']:.3f} (confidence "
          f"{m['judge_confidence']:.3f}) and motion {m['judge_motion_acc']:.3f} on real held-out videos")

    gen = lambda zc, zm: model.generate(zc.float(), zm.float())[:, :, 0]   # (B, T, S, S)
    with torch.no_grad():   # "random" z_C: drawn from the content prior the model samples from
        zc_rand = model.sample(k, dev)[0].cpu().numpy()
        zs_c, zs_m = (t.cpu().numpy() for t in model.sample(k, dev))
    perm = rng.permutation(k)                                    # swap: A = idx, B = idx[perm]
    sets = {"rec_rand": (zc_rand, z_m[idx]), "samples": (zs_c, zs_m), "rec": (z_c[idx], z_m[idx]),
            "swap": (z_c[idx], z_m[idx[perm]]), "fix_c": (z_c[idx], zs_m)}
    made = {name: batched(gen, *codes, device=dev) for name, codes in sets.items()}
    judged = {name: judge_videos(judge, v) for name, v in made.items()}
    motion_of = lambda v: motion_judge.predict(trajectory_features(v))
    label_of = lambda name: judged[name][0].argmax(-1)

    m["recon_motion_err_px_random_c"] = motion_error(videos[idx], made["rec_rand"])
    m["random_c_consistency"], m["random_c_confidence"] = label_stats(judged["rec_rand"][0])[:2]
    m["random_c_motion_acc"] = m["fix_motion_motion_acc"] = float((motion_of(made["rec_rand"]) == motions[idx]).mean())
    (m["sample_consistency"], m["sample_confidence"], m["sample_is"], m["sample_h_y_given_x"],
     m["sample_h_y"]) = label_stats(judged["samples"][0])
    m["sample_fd"] = frechet_distance(judged["samples"][1], feats)
    m["sample_speed_px"] = speed_px(made["samples"])
    m["sample_paths_in_range"] = paths_in_range(made["samples"], videos)
    m["sample_paths_in_range_1px"] = paths_in_range(made["samples"], videos, tol=1.0)
    m["recon_motion_err_px"] = motion_error(videos[idx], made["rec"])
    m["recon_paths_in_range"] = paths_in_range(made["rec"], videos)
    m["recon_digit_acc"] = float((label_of("rec") == digits[idx, None]).mean())
    m["swap_digit_acc"] = float((label_of("swap") == digits[idx, None]).mean())
    m["swap_motion_acc"] = float((motion_of(made["swap"]) == motions[idx[perm]]).mean())
    m["fix_content_digit_acc"] = float((label_of("fix_c") == digits[idx, None]).mean())
    stage(f"reconstructions, swaps and samples: {len(made)} sets of {k} videos, judged")

    figures(out, z_m, motions, videos, idx, made, z_c, model, rng, dev)
    stage("figures and GIFs")
    m = {key: (None if v is None else float(v)) for key, v in m.items()}
    meta = {"checkpoint": os.path.abspath(args.ckpt), "step": ck.get("step"), "variant": variant,
            "videos": n, "generated_videos": k, "data": test.source, "frame_size": cfg.size,
            "digit_judge": f"CNN v{JUDGE_VERSION}"}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({**m, "meta": meta}, f, indent=2)
    print(f"\n{'metric':30s} {'value':>8s}  how to read it")
    for key, v in m.items():
        print(f"{key:30s} {'null' if v is None else f'{v:8.4f}'}  {GUIDE[key]}")
    stage(f"wrote metrics.json, the figures and GIFs to {out}/")
    return 0


def code_metrics(z_m, z_c, videos, motions, digits, groups, rng, seed):
    """Motion clustering and linear probes on the codes, beside the same on raw pixels."""
    m, n, flat = {}, len(z_m), z_m.reshape(len(z_m), -1)
    m["motion_nmi"], m["motion_ari"], m["motion_acc"] = cluster_scores(flat, motions, seed=seed)
    sub = rng.choice(n, min(n, 2000), replace=False)
    pix = PCA(50, random_state=seed).fit_transform(videos[sub].reshape(len(sub), -1) / 255.0)
    m["pixel_nmi"], m["pixel_ari"], m["pixel_acc"] = cluster_scores(pix, motions[sub], seed=seed)
    probes = {"probe_motion_acc": (flat, motions, groups), "probe_digit_acc": (flat, digits, groups),
              "pixel_probe_motion_acc": (pix, motions[sub], groups[sub]),
              "content_probe_digit_acc": (z_c, digits, groups), "content_probe_motion_acc": (z_c, motions, groups)}
    # one process each: the probes are independent single-threaded fits
    accs = Parallel(n_jobs=min(len(probes), os.cpu_count() or 1))(delayed(probe)(*a) for a in probes.values())
    return {**m, **dict(zip(probes, accs))}


def figures(out, z_m, motions, videos, idx, made, z_c, model, rng, dev):
    """The paper's Fig. 4 and 5, motion transfer and samples, as PNGs and (moving) GIFs."""
    real01 = lambda i: videos[i] / 255.0                         # (T, S, S) in [0, 1]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    flat = z_m.reshape(len(z_m), -1)
    sub = rng.choice(len(flat), min(2000, len(flat)), replace=False)
    for name, emb, pts in [("pca", PCA(2).fit_transform(flat), np.arange(len(flat))),
                           ("tsne", TSNE(2, init="pca", random_state=0).fit_transform(flat[sub]), sub)]:
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        for c in range(8):
            sel = motions[pts] == c
            ax.scatter(emb[sel, 0], emb[sel, 1], s=4, color=plt.cm.tab10(c), label=f"{c}: {data.MOTIONS[c]}")
        ax.legend(markerscale=3, fontsize=8, loc="best")
        ax.set_title(f"z_M of {len(pts)} held-out videos ({name.upper()}), by motion")
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"fig4_{name}.png"), dpi=100)
        plt.close(fig)

    def strip(rows):                                             # rows of [T, S, S] -> one image
        return np.concatenate([np.concatenate(list(np.pad(r, ((0, 0), (1, 1), (1, 1)), constant_values=0.5)), 1)
                               for r in rows], 0)

    def grid(rows, name, title):
        img = strip(rows)
        w = min(20, img.shape[1] / 40)                           # inches, the image's own aspect
        fig, ax = plt.subplots(figsize=(w, w * img.shape[0] / img.shape[1] + 0.5))
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=100)
        plt.close(fig)

    rows = [v for j in range(6) for v in (real01(idx[j]), made["rec_rand"][j], made["rec"][j])]
    grid(rows, "fig5_recon.png", "per video: original, G(random z_C, E(x)), G(E_C(x), E(x)); frames across")
    grid(list(made["samples"][:8]), "samples.png", "videos sampled from the priors")
    T, S = videos.shape[1:3]
    write_gif(os.path.join(out, "samples.gif"), [list(made["samples"][r * 4:r * 4 + 4]) for r in range(3)])
    write_gif(os.path.join(out, "recon.gif"),
              [[real01(idx[j]), made["rec"][j], made["rec_rand"][j]] for j in range(4)])
    # content from each row's video, motion from each column's
    pick = idx[:5]
    with torch.no_grad():
        cells = [[model.generate(torch.as_tensor(z_c[a:a + 1]).to(dev),
                                 torch.as_tensor(z_m[b:b + 1]).to(dev))[0, :, 0].float().cpu().numpy()
                  for b in pick] for a in pick]
    blank = np.ones((T, S, S))
    moving = [[blank] + [real01(b) for b in pick]] + [[real01(a)] + cells[i] for i, a in enumerate(pick)]
    write_gif(os.path.join(out, "swap.gif"), moving)
    ts = np.linspace(0, T - 1, 5).astype(int)
    grid([np.concatenate([v[ts] for v in row]) for row in moving], "swap.png",
         "motion transfer: first column = content source (its own video), top row = motion "
         "source; cell = G(E_C(row), E(column)); frames 0, T/4, .., T-1")


def write_gif(path, rows, scale=None):
    """An animated GIF of a grid of videos: rows of [T, S, S] arrays in [0, 1], 10 frames/s."""
    from PIL import Image
    T, S = rows[0][0].shape[:2]
    scale = scale or max(1, 96 // S)                             # small frames drawn larger
    pad = lambda v: np.pad(v, ((0, 0), (1, 1), (1, 1)), constant_values=0.5)
    movie = np.concatenate([np.concatenate([pad(v) for v in row], 2) for row in rows], 1)   # (T, H, W)
    movie = np.kron(movie, np.ones((1, scale, scale)))
    images = [Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8)) for f in movie]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


if __name__ == "__main__":
    sys.exit(main())
