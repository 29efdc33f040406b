"""Trains MDBiGAN on MotionMNIST: per step, one discriminator update, then one E/G update.

Usage (inside the README's .venv):
    python train.py                                   # CUDA: structured64, 5 min; else structured32
    python train.py --device cuda --mnist-dir DIR     # the default GPU preset on real MNIST
    python train.py --preset paper --device cuda      # the paper's conv model as written (+ fixes)
    python train.py --preset structured32 --out-dir runs/cpu   # ~13 minutes on a 2-core CPU
    python train.py --resume --out-dir runs/cpu       # continue that run exactly, its own settings
    python train.py --set recon_weight=0 --set loss=bce        # override any Config field
    python train.py --bench 20 [--compile] [--profile prof.txt] # time the training step only
    torchrun --nproc_per_node=4 train.py --device cuda  # data-parallel (DDP), one shard a rank

Writes to --out-dir (default runs/PRESET): ckpt.pt (atomic: model, optimisers, step, config, the
run's settings, RNG states), log.txt (a line per log interval), log.jsonl (the same numbers),
samples_*.png (sampled videos, real videos and their reconstructions) and losses.png. When a run
ends, the sampling priors are fitted to the encoders' codes (fit_priors) and saved with it.
Ctrl-C or SIGTERM saves a checkpoint first; a NaN/inf loss stops the run and keeps the last good
checkpoint. Then: python eval.py OUT_DIR
"""
import argparse
import copy
import json
import os
import signal
import sys
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch

import data
from mdbigan import CHECKPOINT_VERSION, Config, MDBiGAN, load_checkpoint

# name -> what it is for, model, batch per rank, max steps, time limit in minutes (0: none)
PRESETS = {
    "structured64": ("the project's best model at the paper's sizes (64x64, T=20); the CUDA default",
                     Config(structured=True, ch=32, ch_max=128, d_hidden=256, recon_weight=10.0,
                            adv_weight=0.1, lr=1e-3, prior_weight=1.0, sampler_hidden=32,
                            prior_components=30, prior_temperature=0.5),
                     256, 100_000, 5),
    "structured32": ("the same model at 32x32 for a 2-core CPU; the CPU default",
                     Config.small(ch=16, ch_max=64, d_hidden=128, recon_weight=10.0, adv_weight=0.1,
                                  lr=1e-3, structured=True, prior_weight=1.0, sampler_hidden=32,
                                  prior_components=30, prior_temperature=0.5),
                     16, 3000, 20),
    "paper": ("the paper's conv E and G at its sizes, with the fixes of docs/model.md", Config(),
              32, 20_000, 0),
    "tiny": ("a few seconds: tests and smoke runs",
             Config(frames=4, size=16, dim_z_c=8, dim_z_m=4, dim_eps=4, ch=4, ch_max=8, d_hidden=16),
             4, 4, 0),
}
ALIASES = {"gpu": "structured64", "cpu": "structured32"}
# settings a resumed run takes from its checkpoint, and may not change
FIXED = ("preset", "variant", "batch_size", "seed", "set")


class RunError(Exception):
    """A problem the user can fix (bad checkpoint, folder, data): printed, exit code 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train MDBiGAN on MotionMNIST.", allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when present)")
    p.add_argument("--preset", choices=sorted(PRESETS) + sorted(ALIASES),
                   help="model and schedule (default: structured64 on CUDA, structured32 otherwise; "
                   "gpu and cpu are their aliases)")
    p.add_argument("--out-dir", help="output folder (default runs/PRESET)")
    p.add_argument("--max-steps", type=int, help="iterations to train (default: the preset's)")
    p.add_argument("--time-limit", type=float, help="minutes of training in all, across resumes "
                   "(0 = none; default: the preset's)")
    p.add_argument("--batch-size", type=int, help="videos per step per rank (default: preset's)")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT_DIR/ckpt.pt (or "
                   "the checkpoint given) with the run's own settings")
    p.add_argument("--mnist-dir", help="folder with the MNIST test-set IDX files (data.py)")
    p.add_argument("--variant", choices=["default", "hard"], help="MotionMNIST variant (default: default)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a Config field, e.g. --set loss=bce (repeatable)")
    p.add_argument("--log-every", type=int, default=25, help="steps between log lines")
    p.add_argument("--sample-every", type=int, default=500, help="steps between sample pictures")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    p.add_argument("--bench", type=int, metavar="STEPS", help="only time STEPS training steps "
                   "(synthetic videos, nothing written) of --preset, or of the device's presets")
    p.add_argument("--profile", metavar="FILE", help="with --bench: write torch.profiler's top ops")
    args = p.parse_args(argv)
    for k in ("max_steps", "batch_size", "log_every", "sample_every", "ckpt_every", "bench"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.time_limit is not None and args.time_limit < 0:
        p.error(f"--time-limit must be >= 0 minutes, got {args.time_limit}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    args.preset = ALIASES.get(args.preset, args.preset)
    return args, p


def make_config(base, settings):
    """The preset's Config with --set FIELD=VALUE overrides; RunError names a bad one."""
    d = asdict(base)
    for item in settings:
        k, eq, v = item.partition("=")
        if k not in d or not eq:
            raise RunError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(d)}")
        t = type(d[k])
        if t is bool:
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise RunError(f"--set {item!r}: {k} is true or false")
            d[k] = v.lower() in ("true", "1", "yes")
        else:
            try:
                d[k] = t(v)
            except ValueError:
                raise RunError(f"--set {item!r}: {k} must be {t.__name__}") from None
    try:
        return Config.from_dict(d)
    except ValueError as e:
        raise RunError(str(e)) from None


def resolve(args, ck):
    """The run's settings: the command line's for a new run; the checkpoint's for a resumed one,
    where a flag given again may change only the schedule and logging."""
    if ck is not None:
        saved = ck["args"]
        for k in FIXED:
            given = getattr(args, k)
            if given is not None and given != saved[k]:
                flag = "--" + k.replace("_", "-")
                raise RunError(f"{flag} {given} contradicts the checkpoint's {saved[k]}: a resumed "
                               f"run keeps its own settings; drop {flag}, or start a new run in "
                               "another --out-dir")
            setattr(args, k, saved[k])
        for k in ("max_steps", "time_limit", "mnist_dir"):
            if getattr(args, k) is None:
                setattr(args, k, saved[k])
    args.preset = args.preset or ("structured64" if args.device.startswith("cuda") else "structured32")
    _, base, batch, steps, minutes = PRESETS[args.preset]
    args.variant, args.seed, args.set = args.variant or "default", args.seed or 0, args.set or []
    args.batch_size, args.max_steps = args.batch_size or batch, args.max_steps or steps
    args.time_limit = minutes if args.time_limit is None else args.time_limit
    return make_config(base, args.set) if ck is None else Config.from_dict(ck["config"])


def build(cfg, device, channels_last=False, seed=0):
    """The model and its two Adam optimisers (fused on CUDA: one kernel for all parameters)."""
    torch.manual_seed(seed)                                      # the same init on every rank
    model = MDBiGAN(cfg).to(device)
    for m in model.modules() if channels_last else []:   # cuDNN's bf16 kernels are NHWC: without
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):   # this, every conv converts
            m.to(memory_format=torch.channels_last)
        elif isinstance(m, torch.nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
    fused = {"fused": True} if device.type == "cuda" else {}
    betas = (cfg.beta1, cfg.beta2)
    opt_d = torch.optim.Adam(model.d_parameters(), cfg.lr, betas=betas, **fused)
    opt_eg = torch.optim.Adam(model.eg_parameters(), cfg.lr, betas=betas, **fused)
    return model, opt_d, opt_eg


class EMA:
    """An exponential moving average of a model's weights (Yazici et al. 2019): the weights a run
    saves for sampling and evaluation, steadier than a GAN's last iterate."""

    def __init__(self, model, decay=0.999):
        self.decay, self.updates = decay, 0
        self.avg = copy.deepcopy(model).eval().requires_grad_(False)
        # listed once: the tensors are updated in place, and this runs every step
        self.params = list(self.avg.parameters()), list(model.parameters())
        self.buffers = list(self.avg.buffers()), list(model.buffers())

    @torch.no_grad()
    def update(self):
        self.updates += 1
        # a short memory at first, as TensorFlow's ExponentialMovingAverage: early weights are noise
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(*self.params, 1 - decay)
        for a, b in zip(*self.buffers):                         # (a model may have none)
            a.copy_(b)


def train_step(net, opt_d, opt_eg, videos, autocast, ema=None):
    """One D update, then one E/G update, on the same real videos [B, T, 1, S, S] in [0, 1], then
    the weights' average. Returns both losses as a tensor [2] and the loss terms, all on the device
    (no sync)."""
    losses, logs = [], {}
    for step, opt in (("d", opt_d), ("eg", opt_eg)):
        with autocast:
            loss, terms = net(videos, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        logs.update(terms)
    if ema is not None:
        ema.update()
    return torch.stack(losses), logs


def to_videos(batch, device):
    """uint8 [B, T, S, S] from data.py -> float [B, T, 1, S, S] in [0, 1] on the device."""
    return torch.from_numpy(batch).to(device, non_blocking=True).unsqueeze(2).float() / 255


def batch_indices(seed, rank, world, step, n_items, batch):
    """The videos rank `rank` trains on at `step`: drawn from its own shard (items i with
    i % world == rank), a pure function of (seed, rank, step) so resuming replays them."""
    rng = np.random.default_rng([seed, rank, step])
    return rank + world * rng.integers(0, (n_items - rank + world - 1) // world, batch)


def speedups(device):
    """bf16 autocast and TF32 on CUDA; nothing on the CPU. Returns (autocast context, words)."""
    if device.type != "cuda":
        return nullcontext(), "fp32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True                        # fixed shapes: pick conv algos once
    return torch.autocast("cuda", dtype=torch.bfloat16), "bf16 autocast, TF32"


def bench(args):
    """ms/step and videos/s of exactly the training step, on synthetic videos."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    autocast, words = speedups(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"machine: {name}; torch {torch.__version__}; {words}; compile {args.compile}; "
          f"channels_last {args.channels_last}")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    names = [args.preset] if args.preset else (["structured64", "paper"] if cuda else ["tiny", "structured32"])
    for preset in names:
        _, cfg, batch, _, _ = PRESETS[preset]
        batch = args.batch_size or batch
        model, opt_d, opt_eg = build(cfg, device, args.channels_last)
        net = torch.compile(model) if args.compile else model
        ema = EMA(model)
        rng = np.random.default_rng(0)
        videos = to_videos(rng.integers(0, 256, (batch, cfg.frames, cfg.size, cfg.size), np.uint8), device)
        for _ in range(3):                                       # warm-up (and compilation)
            train_step(net, opt_d, opt_eg, videos, autocast, ema)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.bench):
            train_step(net, opt_d, opt_eg, videos, autocast, ema)
        sync()
        dt = (time.perf_counter() - t0) / args.bench
        print(f"{preset:13s} {cfg.size}x{cfg.size} T={cfg.frames} batch {batch:4d}: "
              f"{dt * 1e3:8.1f} ms/step {batch / dt:9.1f} videos/s", flush=True)
        if args.profile:
            profile(args.profile, preset, lambda: train_step(net, opt_d, opt_eg, videos, autocast, ema), cuda)
    return 0


def profile(path, preset, step, cuda):
    """Appends torch.profiler's top ops (by GPU time on CUDA) over 5 training steps to path."""
    from torch.profiler import ProfilerActivity, profile as prof
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with prof(activities=acts) as p:
        for _ in range(5):
            step()
        torch.cuda.synchronize() if cuda else None
    table = p.key_averages().table(sort_by="device_time_total" if cuda else "cpu_time_total", row_limit=25)
    with open(path, "a") as f:
        f.write(f"== {preset}: 5 training steps\n{table}\n")


def main(argv=None):
    args, _ = parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{cat.__name__}: {msg}\n"   # no source line
    try:
        return bench(args) if args.bench else run(args)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args):
    out = args.out_dir or os.path.join("runs", args.preset or ("structured64" if args.device.startswith("cuda")
                                                               else "structured32"))
    ck = None
    if args.resume:
        try:
            ck = load_checkpoint(os.path.join(out, "ckpt.pt") if args.resume == "auto" else args.resume)
        except ValueError as e:
            raise RunError(e) from None
    cfg = resolve(args, ck)

    ddp = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    if ddp:
        import torch.distributed as dist
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
    device = torch.device(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)
    if rank == 0:
        try:
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, ".write_test"), "w").close()
            os.remove(os.path.join(out, ".write_test"))
        except OSError as e:
            raise RunError(f"cannot write to output folder {out!r} ({e.strerror}); choose another "
                           "with --out-dir") from None
    try:   # each rank renders its own shard of the training split
        ds = data.MotionMNIST("train", args.mnist_dir, cfg.frames, cfg.size, variant=args.variant,
                              seed=args.seed, log=log)
    except (OSError, ValueError) as e:
        raise RunError(e) from None

    model, opt_d, opt_eg = build(cfg, device, args.channels_last, args.seed)
    ema = EMA(model)
    step, elapsed = 0, 0.0
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            ema.avg.load_state_dict(ck["ema"])
            opt_d.load_state_dict(ck["opt_d"])
            opt_eg.load_state_dict(ck["opt_eg"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise RunError(f"checkpoint does not fit this model ({str(e).splitlines()[0][:200]})") from None
        step, elapsed = ck["step"], ck.get("elapsed", 0.0)
        ema.updates = step
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and "cuda" in ck["rng"]:
            torch.cuda.set_rng_state(ck["rng"]["cuda"])
        log(f"resumed from step {step} ({elapsed / 60:.1f} min trained)")
    if ck is None or rank > 0:
        torch.manual_seed(args.seed * 1000 + rank + step)        # ranks draw different noise
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, find_unused_parameters=True)
    if args.compile:
        net = torch.compile(net)
    autocast, words = speedups(device)
    log(f"preset {args.preset} | device {device} | {words} | compile {args.compile} | ranks {world} "
        f"| batch {args.batch_size}/rank | {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"params | data {ds.source} ({args.variant}, {len(ds)} training videos) | up to "
        f"{args.max_steps} steps or {args.time_limit:g} min | out {out}")

    def checkpoint():
        if rank == 0:
            rng = {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()}
                                                       if device.type == "cuda" else {})}
            settings = {k: getattr(args, k) for k in FIXED + ("max_steps", "time_limit", "mnist_dir")}
            save_atomic({"version": CHECKPOINT_VERSION, "model": model.state_dict(),
                         "ema": ema.avg.state_dict(), "opt_d": opt_d.state_dict(),
                         "opt_eg": opt_eg.state_dict(), "step": step, "elapsed": elapsed,
                         "config": asdict(cfg), "args": settings, "rng": rng},
                        os.path.join(out, "ckpt.pt"))

    def get_batch(s):
        return ds.render(batch_indices(args.seed, rank, world, s, len(ds), args.batch_size))[0]

    stop = {"sig": None}
    old = {s: signal.signal(s, lambda signum, _: stop.update(sig=signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    # batches are rendered ahead by threads (NumPy releases the GIL): at 256 videos of 64x64 one
    # thread could not keep up with a GPU; on the CPU one thread beside the step is enough
    ahead = 3 if device.type == "cuda" else 1
    pool = ThreadPoolExecutor(ahead)
    queue = deque(pool.submit(get_batch, s) for s in range(step, step + ahead))
    log_path, jsonl_path = os.path.join(out, "log.txt"), os.path.join(out, "log.jsonl")
    bad = torch.zeros((), dtype=torch.bool, device=device)
    sums, n_sum, t_log, wait, code = {}, 0, time.perf_counter(), 0.0, 0
    limit = args.time_limit * 60 if args.time_limit > 0 else float("inf")
    while step < args.max_steps:
        t0 = time.perf_counter()
        videos = to_videos(queue.popleft().result(), device)
        queue.append(pool.submit(get_batch, step + ahead))
        wait += time.perf_counter() - t0
        losses, terms = train_step(net, opt_d, opt_eg, videos, autocast, ema)
        step += 1
        bad |= ~torch.isfinite(losses).all()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.float()
        n_sum += 1
        elapsed += time.perf_counter() - t0
        finished = step == args.max_steps or elapsed > limit
        last = finished or stop["sig"] is not None
        if step % args.log_every == 0 or last:
            if bad.item():                                       # .item() syncs: on log steps only
                print(f"error: loss became NaN or inf by step {step}; stopping. The last good "
                      f"checkpoint (if any) is kept in {out}/ckpt.pt. Try a lower --set lr=...",
                      file=sys.stderr)
                code = 3
                break
            dt = (time.perf_counter() - t_log) / n_sum
            vals = {k: (v / n_sum).item() for k, v in sums.items()}
            left = min(args.max_steps - step, (limit - elapsed) / dt)
            line = (f"step {step} | " + " | ".join(f"{k} {v:.3f}" for k, v in vals.items())
                    + f" | {dt * 1e3:.1f} ms | {args.batch_size * world / dt:.0f} videos/s | data wait "
                    f"{wait / n_sum * 1e3:.1f} ms | eta {left * dt / 60:.1f}m")
            log(line)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(line + "\n")
                with open(jsonl_path, "a") as f:
                    f.write(json.dumps({"step": step, "ms": dt * 1e3, **vals}) + "\n")
            sums, n_sum, t_log, wait = {}, 0, time.perf_counter(), 0.0
        if finished and rank == 0 and fit_priors(ema.avg, ds, args.seed):   # before the last pictures
            log("fitted the sampling priors to the codes of up to 8,000 training videos")
        if rank == 0 and (step % args.sample_every == 0 or last):
            samples(ema.avg, ds, autocast, os.path.join(out, f"samples_{step:06d}.png"), step)
        if step % args.ckpt_every == 0 or last:
            checkpoint()
        if finished:
            if elapsed > limit:
                log(f"time limit of {args.time_limit:g} minutes reached at step {step}")
            break
        if stop["sig"] is not None:
            log(f"{signal.Signals(stop['sig']).name} received: saved {out}/ckpt.pt at step {step}")
            code = 128 + stop["sig"]
            break
    pool.shutdown(wait=True)
    for s, h in old.items():
        signal.signal(s, h)
    if ddp:
        torch.distributed.destroy_process_group()
    if rank == 0:
        plot_losses(jsonl_path, os.path.join(out, "losses.png"))
        if code == 0:
            log(f"done: {step} steps in {elapsed / 60:.1f} min; checkpoint {out}/ckpt.pt; "
                f"evaluate with: python eval.py {out}")
    return code


@torch.no_grad()
def fit_priors(model, ds, seed, n=8000):
    """Fits the mixtures that model.sample() draws z_C and eps from to E_C's codes and q's means on
    n training videos (ex-post density estimation); False if the config has none."""
    from sklearn.mixture import GaussianMixture
    if model.content_prior is None:
        return False
    items = np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False)
    device = next(model.parameters()).device
    codes = [model.prior_codes(to_videos(ds.render(c)[0], device)) for c in np.array_split(items, -(-len(items) // 256))]
    for i, prior in enumerate((model.content_prior, model.eps_prior)):
        if prior is not None:
            x = torch.cat([c[i] for c in codes]).float().cpu().numpy()
            k = min(len(prior.weights), len(x))                 # (fewer videos than components)
            gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(x)
            prior.set(gm.weights_, gm.means_, gm.covariances_)
    return True


def save_atomic(obj, path):
    """Writes to a temporary file, then renames: a crash never leaves half a checkpoint."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def _plt():
    import matplotlib
    matplotlib.use("Agg")                                        # files only, no display
    import matplotlib.pyplot as plt
    return plt


@torch.no_grad()
def samples(model, ds, autocast, path, step):
    """A labelled picture: 4 videos from the priors, then 4 real videos each above G(E_C(x), E(x))."""
    device = next(model.parameters()).device
    # its own RNG stream, so that pictures never change the training run (resume equality)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
        torch.manual_seed(step)
        fake = model.generate(*model.sample(4, device)).float()
        real = to_videos(ds.render((np.arange(4) * 8 * 997 + np.arange(4)) % len(ds))[0], device)
        rec = model.generate(model.encode_content(real), model.encode_motion(real)).float()
    rows = [(f"sample {i + 1}", v) for i, v in enumerate(fake)]
    for i, x in enumerate(real):
        rows += [(f"real {i + 1}", x), ("recon", rec[i])]
    plt = _plt()
    S, T = real.shape[-1], real.shape[1]
    fig, axes = plt.subplots(len(rows), 1, figsize=(T * 0.5, len(rows) * 0.55 + 0.4), squeeze=False)
    for ax, (label, v) in zip(axes[:, 0], rows):
        strip = np.pad(v[:, 0].cpu().numpy(), ((0, 0), (0, 0), (0, 1)), constant_values=0.5)
        ax.imshow(strip.transpose(1, 0, 2).reshape(S, -1), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"step {step}: frames across", fontsize=9)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def plot_losses(jsonl_path, png):
    """losses.png: the adversarial terms, and the others on a log scale (they are >= 0)."""
    rows = [json.loads(line) for line in open(jsonl_path)] if os.path.exists(jsonl_path) else []
    if not rows:
        return
    plt = _plt()
    keys = [k for k in rows[-1] if k not in ("step", "ms")]
    adv = [k for k in keys if k in ("d_i", "d_v", "g")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, ks, title in zip(axes, (adv, [k for k in keys if k not in adv]),
                             ("adversarial", "reconstruction and consistency (log)")):
        for k in ks:
            ax.plot([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r], label=k)
        ax.set_xlabel("step"), ax.set_title(title, fontsize=10), ax.grid(alpha=0.3)
        if ks:
            ax.legend()
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
