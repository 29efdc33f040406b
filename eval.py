"""Evaluates an MDBiGAN checkpoint on the held-out MotionMNIST digits (SPEC.md section 6).

Usage:
    python eval.py runs/cpu/ckpt.pt                       # writes runs/cpu/eval/
    python eval.py CKPT --out-dir DIR --mnist-dir DIR --device cuda
    python eval.py CKPT --variant hard                    # the random-speed-and-start variant

The model is rebuilt from the checkpoint alone. Writes to --out-dir (default: eval/ beside the
checkpoint, or eval_hard/ for --variant hard):
  metrics.json   every number below (fractions in [0, 1]; errors in pixels of the model's frames;
                 a metric that does not apply, e.g. without a content encoder, is null)
  fig4_pca.png, fig4_tsne.png   z_M of held-out videos, coloured by motion (the paper's Fig. 4;
                 t-SNE on a subsample of 2,000 videos)
  fig5_recon.png  originals above G(random z_C, E(x)) and G(E_C(x), E(x)) (the paper's Fig. 5)
  swap.png       motion transfer: content from each row's video, motion from each column's
  samples.png    videos sampled from the priors
Metrics: k-means (k = 8) NMI / ARI / cluster accuracy on z_M and on raw pixels (PCA 50, 2,000
videos: the baseline to beat); linear probes on z_M (motion: high is good; digit: content leaking
into the motion code, chance 0.1) and on z_C; centre-of-mass motion error of reconstructions;
digit recognisability by a classifier fitted on real training-split digits (28x28 crops at
64x64, scaled with the frame), and its mean top probability on sampled and on real frames
(sample_confidence, judge_confidence: how legible, where consistency says only how steady);
swap accuracy by that classifier and a motion judge fitted on
real centre-of-mass trajectories. The judges' own accuracy on real held-out videos is reported.
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import data
from mdbigan import MDBiGAN, load_checkpoint

KEYS = ["motion_nmi", "motion_ari", "motion_acc", "pixel_nmi", "pixel_ari", "pixel_acc",
        "probe_motion_acc", "probe_digit_acc", "pixel_probe_motion_acc", "content_probe_digit_acc",
        "content_probe_motion_acc", "recon_motion_err_px", "recon_motion_err_px_random_c",
        "recon_digit_acc", "sample_consistency", "sample_confidence", "swap_motion_acc",
        "swap_digit_acc", "judge_digit_acc", "judge_confidence", "judge_motion_acc"]

# how to read each number in the printed table: which way is good, and its target or baseline
GUIDE = {
    "motion_nmi": "higher is better; target >= 0.95; raw pixels: pixel_nmi",
    "pixel_nmi": "the baseline: k-means on raw pixels",
    "probe_motion_acc": "higher is better; target >= 0.98",
    "probe_digit_acc": "lower is better (digit leaking into z_M); chance 0.10",
    "content_probe_digit_acc": "higher is better (z_C holds the digit)",
    "content_probe_motion_acc": "lower is better (motion leaking into z_C); chance 0.125",
    "recon_motion_err_px": "lower is better (pixels of the model's frames)",
    "recon_motion_err_px_random_c": "lower is better; the paper's Fig. 5 setting",
    "recon_digit_acc": "higher is better; the judge on real frames: judge_digit_acc",
    "sample_consistency": "higher is better: one digit over all frames of a sampled video",
    "sample_confidence": "higher is better; real frames: judge_confidence",
    "swap_motion_acc": "higher is better; target >= 0.95",
    "swap_digit_acc": "higher is better",
    "judge_digit_acc": "the digit judge on real held-out frames (its ceiling)",
    "judge_motion_acc": "the motion judge on real held-out videos",
}


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
    """frames [..., S, S] non-negative -> (x, y) centre of mass [..., 2] in pixels."""
    S = frames.shape[-1]
    w = frames.reshape(*frames.shape[:-2], -1).astype(np.float64)
    total = w.sum(-1) + 1e-8
    ys, xs = np.divmod(np.arange(S * S), S)
    return np.stack([(w * xs).sum(-1) / total, (w * ys).sum(-1) / total], -1)


def motion_error(real, fake):
    """Mean distance in pixels between the centres of mass of real and fake frames [N, T, S, S]."""
    return float(np.linalg.norm(centre_of_mass(real) - centre_of_mass(fake), axis=-1).mean())


def crops(frames, size):
    """size x size crops of frames [N, S, S] around each frame's centre of mass (zero-padded)."""
    S = frames.shape[-1]
    c = np.rint(centre_of_mass(frames)).astype(int)              # (N, 2) as (x, y)
    pad = np.pad(frames, ((0, 0), (size, size), (size, size)))
    y0, x0 = c[:, 1] + size - size // 2, c[:, 0] + size - size // 2
    win = np.lib.stride_tricks.sliding_window_view(pad, (size, size), axis=(1, 2))
    return win[np.arange(len(frames)), np.clip(y0, 0, S + size), np.clip(x0, 0, S + size)]


def trajectory_features(videos):
    """Motion judge features: centre-of-mass path [N, T, 2], absolute and relative to its start."""
    com = centre_of_mass(videos) / videos.shape[-1]
    return np.concatenate([com.reshape(len(videos), -1),
                           (com - com[:, :1]).reshape(len(videos), -1)], 1)


# ----------------------------------------------------------------------------- the run

@torch.no_grad()
def batched(fn, *arrays, batch=256, device="cpu"):
    """Runs fn on uint8 video batches [b, T, S, S] -> numpy, concatenated."""
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
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled codes and k-means")
    args = p.parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{cat.__name__}: {msg}\n"   # no source line
    if args.max_videos < 0:
        p.error(f"--max-videos must be >= 0, got {args.max_videos}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    t0 = time.perf_counter()

    def stage(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    try:
        ck = load_checkpoint(args.ckpt)
        model = MDBiGAN.from_checkpoint(args.ckpt, args.device)
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
        train_set = data.MotionMNIST("train", args.mnist_dir, cfg.frames, cfg.size, variant=variant)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    stage(f"checkpoint {args.ckpt} (step {ck.get('step')}, {cfg.size}x{cfg.size}, T={cfg.frames}, "
          f"content encoder {cfg.content_encoder}); data {test.source}, {variant} variant")

    n = len(test) if args.max_videos <= 0 else min(args.max_videos, len(test))
    items = np.arange(len(test)) if n == len(test) else np.sort(rng.choice(len(test), n, replace=False))
    videos, motions, digits = test.render(items)                 # (N, T, S, S) uint8
    groups = items // 8                                          # digit index: probe split
    dev = args.device
    z_m = batched(lambda v: model.encode_motion(to_model(v)), videos, device=dev)  # (N, T, dz_m)
    z_c = batched(lambda v: model.encode_content(to_model(v)), videos, device=dev) \
        if cfg.content_encoder else None
    stage(f"encoded {n} held-out videos")
    m = dict.fromkeys(KEYS)

    # motion clustering on z_M against raw pixels
    flat = z_m.reshape(n, -1)
    m["motion_nmi"], m["motion_ari"], m["motion_acc"] = cluster_scores(flat, motions, seed=args.seed)
    sub = rng.choice(n, min(n, 2000), replace=False)
    pix = PCA(50, random_state=args.seed).fit_transform(videos[sub].reshape(len(sub), -1) / 255.0)
    m["pixel_nmi"], m["pixel_ari"], m["pixel_acc"] = cluster_scores(pix, motions[sub], seed=args.seed)
    stage("k-means on z_M and on raw pixels")
    probes = {"probe_motion_acc": (flat, motions, groups), "probe_digit_acc": (flat, digits, groups),
              "pixel_probe_motion_acc": (pix, motions[sub], groups[sub])}
    if z_c is not None:
        probes.update(content_probe_digit_acc=(z_c, digits, groups),
                      content_probe_motion_acc=(z_c, motions, groups))
    # one process each: the probes are independent single-threaded fits
    accs = Parallel(n_jobs=min(len(probes), os.cpu_count() or 1))(delayed(probe)(*a) for a in probes.values())
    m.update(zip(probes, accs))
    stage("linear probes")

    # judges, fitted on real training-split videos
    d = data.digit_size(cfg.size)
    tv, tm, td = train_set.render(rng.choice(len(train_set), min(8000, len(train_set)), replace=False))
    t_pick = rng.integers(0, cfg.frames, len(tv))
    # raw [0, 1] pixels, no StandardScaler: scaled, the near-constant black corners of real crops
    # made a faint grey background read as huge values (measured on one checkpoint's
    # reconstructions: 13% digit accuracy with the scaler, 48% without; 93-94% on real frames both)
    digit_clf = MLPClassifier((256,), max_iter=60, early_stopping=True, random_state=args.seed)
    motion_clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        digit_clf.fit(crops(tv[np.arange(len(tv)), t_pick], d).reshape(len(tv), -1) / 255.0, td)
        motion_clf.fit(trajectory_features(tv), tm)

    def classify(vids, confidence=False):                        # (N, T, S, S) in [0, 1] -> (N, T)
        c = crops(vids.reshape(-1, cfg.size, cfg.size), d).reshape(len(vids) * cfg.frames, -1)
        prob = digit_clf.predict_proba(c)
        labels = digit_clf.classes_[prob.argmax(1)].reshape(len(vids), cfg.frames)
        return (labels, float(prob.max(1).mean())) if confidence else labels

    real01 = videos / 255.0
    labels, m["judge_confidence"] = classify(real01, confidence=True)
    m["judge_digit_acc"] = float((labels == digits[:, None]).mean())
    m["judge_motion_acc"] = float((motion_clf.predict(trajectory_features(real01)) == motions).mean())
    stage(f"judges fitted on {len(tv)} training videos: digit {m['judge_digit_acc']:.3f}, "
          f"motion {m['judge_motion_acc']:.3f} on real held-out videos")

    # reconstructions, samples, swaps
    k = min(n, 2000)
    idx = rng.choice(n, k, replace=False)
    zc_rand = torch.randn(k, cfg.dim_z_c, generator=torch.Generator().manual_seed(args.seed)).numpy()
    gen = lambda zc, zm: model.generate(zc.float(), zm.float())[:, :, 0]   # (B, T, S, S)
    rec_rand = batched(gen, zc_rand, z_m[idx], device=dev)
    m["recon_motion_err_px_random_c"] = motion_error(real01[idx], rec_rand)
    rec = None
    if z_c is not None:
        rec = batched(gen, z_c[idx], z_m[idx], device=dev)
        m["recon_motion_err_px"] = motion_error(real01[idx], rec)
        m["recon_digit_acc"] = float((classify(rec) == digits[idx, None]).mean())
        perm = rng.permutation(k)                                # A = idx, B = idx[perm]
        swap = batched(gen, z_c[idx], z_m[idx[perm]], device=dev)
        m["swap_digit_acc"] = float((classify(swap) == digits[idx, None]).mean())
        m["swap_motion_acc"] = float((motion_clf.predict(trajectory_features(swap))
                                      == motions[idx[perm]]).mean())
    else:
        m["recon_motion_err_px"] = m["recon_motion_err_px_random_c"]
    with torch.no_grad():
        zs_c, zs_m = model.sample(k, dev)
    samples = batched(gen, zs_c.cpu().numpy(), zs_m.cpu().numpy(), device=dev)
    # one canvas per video (structured G) keeps any drawing the same over the frames: the judge's
    # mean top probability on the sampled frames, beside its value on real ones, says how legible
    labels, m["sample_confidence"] = classify(samples, confidence=True)
    m["sample_consistency"] = float((labels == labels[:, :1]).all(1).mean())
    stage(f"reconstructions, swaps and samples of {k} videos")

    figures(out, z_m, motions, real01, idx, rec_rand, rec, z_c, model, samples, rng, dev)
    stage("figures")
    m = {key: (None if v is None else float(v)) for key, v in m.items()}
    meta = {"checkpoint": os.path.abspath(args.ckpt), "step": ck.get("step"), "variant": variant,
            "videos": n, "data": test.source, "frame_size": cfg.size}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({**m, "meta": meta}, f, indent=2)
    print(f"\n{'metric':30s} {'value':>8s}  how to read it")
    for key, v in m.items():
        print(f"{key:30s} {'null' if v is None else f'{v:8.4f}'}  {GUIDE.get(key, '')}")
    stage(f"wrote metrics.json and the figures to {out}/")
    return 0


def figures(out, z_m, motions, real01, idx, rec_rand, rec, z_c, model, samples, rng, dev):
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

    def grid(rows, path, title):
        S = rows[0].shape[-1]
        img = np.concatenate([np.concatenate(list(np.pad(r, ((0, 0), (1, 1), (1, 1)), constant_values=0.5)), 1)
                              for r in rows], 0)
        w = min(20, img.shape[1] / 40)                        # inches, the image's own aspect
        fig, ax = plt.subplots(figsize=(w, w * img.shape[0] / img.shape[1] + 0.5))
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    rows = []
    for j in range(6):
        rows += [real01[idx[j]], rec_rand[j]] + ([rec[j]] if rec is not None else [])
    grid(rows, os.path.join(out, "fig5_recon.png"), "per video: original, G(random z_C, E(x))"
         + (", G(E_C(x), E(x))" if rec is not None else "") + "; frames across")
    grid(list(samples[:8]), os.path.join(out, "samples.png"), "videos sampled from the priors")
    if z_c is not None:
        # content from each row's video, motion from each column's (frames 0, T/4, ... shown)
        pick = idx[:5]
        ts = np.linspace(0, real01.shape[1] - 1, 5).astype(int)
        with torch.no_grad():
            cells = [[model.generate(torch.as_tensor(z_c[a:a + 1]).to(dev),
                                     torch.as_tensor(z_m[b:b + 1]).to(dev))[0, ts, 0].cpu().numpy()
                      for b in pick] for a in pick]
        S = real01.shape[-1]
        blank = np.full((len(ts), S, S), 1.0)
        rows = [np.concatenate([blank] + [real01[b, ts] for b in pick])]
        rows += [np.concatenate([real01[a, ts]] + cells[i]) for i, a in enumerate(pick)]
        grid(rows, os.path.join(out, "swap.png"), "motion transfer: first column = content source "
             "(its own video), top row = motion source; cell = G(E_C(row), E(column))")


if __name__ == "__main__":
    sys.exit(main())
