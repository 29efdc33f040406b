"""Trains MDBiGAN: per step, one discriminator update, then one E/G update.

Usage (inside the README's .venv):
    python train.py                                   # CUDA: structured64, 5 min; else structured32
    python train.py --device cuda --mnist-dir DIR     # the default GPU preset on real MNIST
    python train.py --data videos.npz --preset generic32       # your own videos (data.py --export)
    python train.py --data videos.npz --frames 16     # ... on random windows of 16 frames
    python train.py --data sprites.npz --preset generic32 --time-limit 0   # Sprites (data.py --sprites)
    python train.py --preset paper --device cuda      # the paper's conv model as written (+ fixes)
    python train.py --resume --out-dir runs/cpu       # continue that run exactly, its own settings
    python train.py --set recon_weight=0 --set loss=bce        # override any Config field
    python train.py --bench 20 [--compile] [--profile prof.txt] # time the training step only
    torchrun --nproc_per_node=4 train.py --device cuda  # data-parallel (DDP), one shard a rank

Data: MotionMNIST (data.py; --variant, --mnist-dir), or --data FILE.npz holding `videos`, uint8
[N, T, H, W] or [N, T, H, W, C] with C = 1 or 3, and optionally int labels `content`, `motion`
[N] that only evaluation reads. Frames are centre-cropped and resized to the preset's size; the
file's T sets the model's frames (or --frames K, windows); its `split` array (0 train, 1 test)
says which videos are held out, else a seeded 10% are (data.py --sprites writes the authors').

Writes to --out-dir (default runs/PRESET), which must not hold another run (--resume continues
it, --overwrite replaces it): ckpt.pt (atomic: model, its weight average, optimisers, step,
config, the run's settings and data, RNG states), model.pt (the average's inference weights
only, when the run ends), log.txt (a line per log interval), log.jsonl (the same numbers),
samples_*.png (sampled videos, real videos and their reconstructions) and losses.png. When a run
ends, the sampling priors are fitted to the encoders' codes (fit_priors). Ctrl-C or SIGTERM saves
a checkpoint first; a NaN/inf loss stops the run and keeps the last good checkpoint. A jump of
the reconstruction error (a GAN diverging) rolls the run back 25 to 50 steps and halves its
learning rates (--rollback; a line in the log says so).
Then: python eval.py OUT_DIR
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
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

import data
from mdbigan import CHECKPOINT_VERSION, Config, MDBiGAN, load_checkpoint, sampler_backend


@dataclass(frozen=True)
class Preset:
    about: str                  # what it is for
    config: Config              # the model
    batch_size: int             # videos per step per rank
    max_steps: int              # iterations
    minutes: float              # time limit across resumes; 0: none


STRUCTURED64 = Preset(
    "the project's best model at the paper's sizes (64x64, T=20); the CUDA default",
    Config(structured=True, ch=32, ch_max=128, d_hidden=256, recon_weight=10.0, adv_weight=0.1,
           lr=1e-3, prior_weight=1.0, sampler_hidden=32, prior_components=30, prior_temperature=0.5),
    batch_size=256, max_steps=100_000, minutes=5)
PRESETS = {
    "structured64": STRUCTURED64,
    "structured32": replace(STRUCTURED64, about="the same model at 32x32 for a 2-core CPU; the CPU default",
                            config=replace(STRUCTURED64.config, size=32, ch=16, ch_max=64, d_hidden=128),
                            batch_size=16, max_steps=3000, minutes=20),
    # the conv family for any motion: G deforms a picture drawn per frame from z_C (the middle
    # frame's content) and z_M(t), rebuilt from that frame outward first; a narrow, noisy motion
    # code centred over the video and read alike whatever moves (the swap cycle); z_C kept apart
    # from the motion by a critic and a whitened dependence measure, z_M from the look by the
    # same measure; the reconstruction's error at three scales, so that a small region's colour
    # weighs more than its pixels; weak adversarial terms warmed up, no latent term
    # (docs/model.md); the structured presets' schedule and sampling priors
    "generic32": replace(STRUCTURED64, about="conv E/G for any motion at 32x32; on a CPU",
                         config=replace(STRUCTURED64.config, structured=False, size=32, ch=16, ch_max=64,
                                        d_hidden=128, dim_z_m=4, dim_z_c=32, motion_noise=0.05,
                                        adv_weight=0.02, adv_warmup=1000, latent_weight=0.0, warp=True,
                                        centre_motion=True, swap_weight=1.0, content_frame="middle",
                                        recon_warmup=1000, pose_picture=True, independence_weight=2.0,
                                        independence_codes="swap", dependence_weight=0.5,
                                        dependence_memory=0.99, leak_weight=0.5, colour_jitter=0.9,
                                        content_ch=32, recon_scales=3),
                         batch_size=16, max_steps=3000, minutes=60),
    "paper": Preset("the paper's conv E and G at its sizes, with the fixes of docs/model.md", Config(),
                    batch_size=32, max_steps=20_000, minutes=0),
    "tiny": Preset("a few seconds: tests and smoke runs",
                   Config(frames=4, size=16, dim_z_c=8, dim_z_m=4, dim_eps=4, ch=4, ch_max=8, d_hidden=16),
                   batch_size=4, max_steps=4, minutes=0),
}
# one place for the generic model's mechanisms: 64x64 changes only the sizes
PRESETS["generic64"] = replace(STRUCTURED64, about="conv E/G for any motion at 64x64; on a GPU",
                               config=replace(PRESETS["generic32"].config, size=64, ch=32, ch_max=128,
                                              d_hidden=256, content_ch=64),
                               batch_size=128)
ALIASES = {"gpu": "structured64", "cpu": "structured32"}
# settings a resumed run takes from its checkpoint, and may not change
FIXED = ("preset", "variant", "batch_size", "seed", "set", "frames")
RUN_FILES = ("ckpt.pt", "model.pt", "log.txt", "log.jsonl", "losses.png")   # and samples_*.png


class RunError(Exception):
    """A problem the user can fix (bad checkpoint, folder, data): printed, exit code 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train MDBiGAN on MotionMNIST or your own videos.",
                                allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when present)")
    p.add_argument("--preset", choices=sorted(PRESETS) + sorted(ALIASES),
                   help="model and schedule (default: structured64 on CUDA, structured32 otherwise; "
                   "gpu and cpu are their aliases)")
    p.add_argument("--out-dir", help="output folder (default runs/PRESET)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out-dir")
    p.add_argument("--max-steps", type=int, help="iterations to train in all (default: the preset's)")
    p.add_argument("--time-limit", type=float, help="minutes of training in all, across resumes "
                   "(0 = none; default: the preset's)")
    p.add_argument("--batch-size", type=int, help="videos per step per rank (default: preset's)")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT_DIR/ckpt.pt (or "
                   "the checkpoint given) with the run's own settings and data")
    p.add_argument("--data", metavar="FILE.npz", help="train on these videos instead of MotionMNIST")
    p.add_argument("--frames", type=int, help="with --data: train on random windows of this many "
                   "frames (default: the file's length)")
    p.add_argument("--mnist-dir", help="folder with the MNIST test-set IDX files (data.py)")
    p.add_argument("--variant", choices=data.VARIANTS, help="MotionMNIST variant (default: default)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a Config field, e.g. --set loss=bce (repeatable)")
    p.add_argument("--log-every", type=int, default=25, help="steps between log lines")
    p.add_argument("--sample-every", type=int, default=500, help="steps between sample pictures")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--rollback", type=float, default=2.5, metavar="FACTOR", help="roll back to the "
                   "weights of one to two log lines before, and halve the learning rates, when a log "
                   "line's reconstruction error exceeds FACTOR times the median of the last "
                   f"{Guard.WINDOW} lines' (0: never; default 2.5)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    p.add_argument("--bench", type=int, metavar="STEPS", help="only time STEPS training steps "
                   "(synthetic videos, nothing written) of --preset, or of the device's presets")
    p.add_argument("--profile", metavar="FILE", help="with --bench: write torch.profiler's top ops")
    args = p.parse_args(argv)
    for k in ("max_steps", "batch_size", "log_every", "sample_every", "ckpt_every", "bench"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.rollback != 0 and args.rollback <= 1:
        p.error(f"--rollback must be 0 (never) or a factor above 1, got {args.rollback:g}")
    if args.time_limit is not None and args.time_limit < 0:
        p.error(f"--time-limit must be >= 0 minutes, got {args.time_limit}")
    if args.frames is not None and (args.frames < 2 or not args.data):
        p.error("--frames K needs --data FILE and K >= 2 (MotionMNIST videos have 20 frames)")
    if args.data and (args.variant or args.mnist_dir):
        p.error("--data FILE replaces MotionMNIST: drop --variant and --mnist-dir")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    args.preset = ALIASES.get(args.preset, args.preset)
    return args


# ----------------------------------------------------------------------------- the run's settings

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
    """Fills args with the run's settings: the command line's for a new run; the checkpoint's for
    a resumed one, where a flag given again may change only the schedule and logging."""
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
        for k in ("max_steps", "time_limit"):
            if getattr(args, k) is None:
                setattr(args, k, saved[k])
    args.preset = args.preset or ("structured64" if args.device.startswith("cuda") else "structured32")
    preset = PRESETS[args.preset]
    args.variant, args.seed, args.set = args.variant or "default", args.seed or 0, args.set or []
    args.batch_size, args.max_steps = args.batch_size or preset.batch_size, args.max_steps or preset.max_steps
    args.time_limit = preset.minutes if args.time_limit is None else args.time_limit


def open_data(args, ck, cfg, log):
    """The training split of the run's data: the checkpoint's for a resumed run (--data and
    --mnist-dir may say where it is now, not change it), the command line's for a new one.
    Returns (data set, spec to store)."""
    if ck is not None:
        spec = dict(ck["args"]["data"])
        if args.data and os.path.abspath(args.data) != spec.get("path"):
            if spec["kind"] != "file":
                raise RunError(f"--data {args.data}: the run was trained on MotionMNIST; drop --data")
            spec["path"] = os.path.abspath(args.data)   # moved: the fingerprint must still match
        if args.mnist_dir:
            spec["mnist_dir"] = os.path.abspath(args.mnist_dir)
    elif args.data:
        spec = {"kind": "file", "path": os.path.abspath(args.data), "frames": args.frames}
    else:
        spec = {"kind": "motionmnist", "mnist_dir": args.mnist_dir, "variant": args.variant}
    try:
        # MotionMNIST renders the model's length; a file's length is its own (or --frames)
        ds = data.open_dataset(spec, "train", cfg.size, None if spec["kind"] == "file" else cfg.frames, log)
    except (OSError, ValueError) as e:
        raise RunError(e) from None
    return ds, data.spec_of(ds, spec.get("mnist_dir"))


def check_out_dir(out, overwrite, write=True):
    """Refuses to start a new run where one is (unless overwrite); with write, makes the folder,
    checks it is writable and removes the replaced run's files (after the data opened, so that a
    refused data file leaves nothing behind)."""
    old = os.path.join(out, "ckpt.pt")
    if os.path.exists(old) and not overwrite:
        raise RunError(f"{out} already holds a run ({old}): continue it with --resume, start this "
                       "one in another --out-dir, or replace it with --overwrite")
    if not write:
        return
    try:
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, ".write_test"), "w").close()
        os.remove(os.path.join(out, ".write_test"))
        for name in os.listdir(out) if overwrite else []:
            if name in RUN_FILES or (name.startswith("samples_") and name.endswith(".png")):
                os.remove(os.path.join(out, name))
    except OSError as e:
        raise RunError(f"cannot write to output folder {out!r} ({e.strerror}); choose another "
                       "with --out-dir") from None


# ----------------------------------------------------------------------------- the training step

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
    """An exponential moving average of a model's inference weights (Yazici et al. 2019): the
    weights a run saves for sampling and evaluation, steadier than a GAN's last iterate. The
    discriminators are left out: nothing reads their average."""

    def __init__(self, model, decay=0.999):
        self.decay, self.updates = decay, 0
        self.avg = copy.deepcopy(model).eval().requires_grad_(False)
        keep = lambda named: [t for n, t in named if not n.startswith(MDBiGAN.DISCRIMINATORS)]
        # listed once: the tensors are updated in place, and this runs every step
        self.params = keep(self.avg.named_parameters()), keep(model.named_parameters())
        self.buffers = keep(self.avg.named_buffers()), keep(model.named_buffers())

    @torch.no_grad()
    def update(self):
        self.updates += 1
        # a short memory at first, as TensorFlow's ExponentialMovingAverage: early weights are noise
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(*self.params, 1 - decay)
        for a, b in zip(*self.buffers):                         # (a model may have none)
            a.copy_(b)

    def state_dict(self):
        return self.avg.inference_state_dict()

    def load_state_dict(self, state):
        self.avg.load_state_dict(state, strict=False)


def train_step(net, opt_d, opt_eg, videos, autocast, ema=None, iteration=None):
    """One D update, then one E/G update, on the same real videos [B, T, C, S, S] in [0, 1], then
    the weights' average; `iteration` (the step's number) drives the adversarial warm-up.
    Returns both losses as a tensor [2] and the loss terms, all on the device (no sync)."""
    losses, logs = [], {}
    for step, opt in (("d", opt_d), ("eg", opt_eg)):
        with autocast:
            loss, terms = net(videos, step, iteration)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        logs.update(terms)
    if ema is not None:
        ema.update()
    return torch.stack(losses), logs


def to_videos(batch, device):
    """uint8 [B, T, C, S, S] (or [B, T, S, S]) from data.py -> float in [0, 1] on the device."""
    x = torch.from_numpy(batch).to(device, non_blocking=True)
    return (x.unsqueeze(2) if x.dim() == 4 else x).float() / 255


def batch_indices(seed, rank, world, step, n_items, batch):
    """The videos rank `rank` trains on at `step`: drawn from its own shard (items i with
    i % world == rank), a pure function of (seed, rank, step) so resuming replays them."""
    rng = np.random.default_rng([seed, rank, step])
    return rank + world * rng.integers(0, (n_items - rank + world - 1) // world, batch)


def get_batch(ds, seed, rank, world, step, batch):
    """The uint8 clips [B, T, C, S, S] of batch_indices, in random windows where ds has them."""
    items = batch_indices(seed, rank, world, step, len(ds), batch)
    if getattr(ds, "file_frames", ds.frames) == ds.frames:
        return ds.clips(items)[0]
    starts = np.random.default_rng([seed, rank, step, 1]).integers(0, ds.file_frames - ds.frames + 1, batch)
    return ds.clips(items, starts)[0]


def speedups(device):
    """bf16 autocast and TF32 on CUDA; nothing on the CPU. Returns (autocast context, words)."""
    if device.type != "cuda":
        return nullcontext(), "fp32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True                        # fixed shapes: pick conv algos once
    return torch.autocast("cuda", dtype=torch.bfloat16), "bf16 autocast, TF32"


# ----------------------------------------------------------------------------- --bench

def bench(args):
    """ms/step and videos/s of exactly the training step, on synthetic videos."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    autocast, words = speedups(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"machine: {name}; torch {torch.__version__}; {words}; compile {args.compile}; "
          f"channels_last {args.channels_last}")
    names = [args.preset] if args.preset else (["structured64", "paper"] if cuda else ["tiny", "structured32"])
    for preset in names:
        cfg, batch = make_config(PRESETS[preset].config, args.set or []), args.batch_size or PRESETS[preset].batch_size
        dt = time_steps(cfg, batch, device, args, autocast)
        print(f"{preset:13s} {cfg.size}x{cfg.size} T={cfg.frames} batch {batch:4d}: "
              f"{dt * 1e3:8.1f} ms/step {batch / dt:9.1f} videos/s", flush=True)
    return 0


def time_steps(cfg, batch, device, args, autocast):
    """Seconds per training step of cfg at this batch (after 3 warm-up steps); with --profile,
    appends torch.profiler's top ops over 5 more steps to that file."""
    model, opt_d, opt_eg = build(cfg, device, args.channels_last)
    net = torch.compile(model) if args.compile else model
    ema = EMA(model)
    rng = np.random.default_rng(0)
    videos = to_videos(rng.integers(0, 256, (batch, cfg.frames, cfg.channels, cfg.size, cfg.size), np.uint8), device)
    step = lambda: train_step(net, opt_d, opt_eg, videos, autocast, ema)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):                                           # warm-up (and compilation)
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.bench):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.bench
    if args.profile:
        profile(args.profile, f"{cfg.size}x{cfg.size} batch {batch}", step, device.type == "cuda")
    return dt


def profile(path, what, step, cuda):
    """Appends torch.profiler's top ops (by GPU time on CUDA) over 5 training steps to path."""
    from torch.profiler import ProfilerActivity, profile as prof
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with prof(activities=acts) as p:
        for _ in range(5):
            step()
        torch.cuda.synchronize() if cuda else None
    table = p.key_averages().table(sort_by="device_time_total" if cuda else "cpu_time_total", row_limit=25)
    with open(path, "a") as f:
        f.write(f"== {what}: 5 training steps\n{table}\n")


# ----------------------------------------------------------------------------- a training run

@dataclass
class Run:
    """Everything a training run holds while it trains."""
    args: argparse.Namespace
    cfg: Config
    out: str
    device: torch.device
    ds: object                 # the training split: data.MotionMNIST or data.VideoFile
    spec: dict                 # how to find the data again (data.open_dataset)
    model: MDBiGAN
    net: torch.nn.Module       # what the step calls: the model, or its DDP / compiled wrapper
    opt_d: torch.optim.Optimizer
    opt_eg: torch.optim.Optimizer
    ema: EMA
    autocast: object
    rank: int = 0
    world: int = 1
    step: int = 0
    elapsed: float = 0.0       # seconds of training, across resumes
    log: object = print
    stop: dict = field(default_factory=lambda: {"sig": None})
    guard: dict = field(default_factory=dict)   # the rollback guard's state (Guard), checkpointed


def read_resume(args, out):
    """The checkpoint --resume names, or None for a new run."""
    if not args.resume:
        return None
    path = os.path.join(out, "ckpt.pt") if args.resume == "auto" else args.resume
    try:
        ck = load_checkpoint(path)
    except ValueError as e:
        raise RunError(e) from None
    if "opt_d" not in ck:
        raise RunError(f"{path} holds inference weights only (a pretrained model or a run's "
                       "model.pt): it can be sampled and evaluated, not resumed; resume from the "
                       "run's ckpt.pt, or start a new run")
    return ck


def start_ranks(args):
    """(rank, world size); joins the process group under torchrun."""
    if "RANK" not in os.environ:
        return 0, 1
    import torch.distributed as dist
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if args.device.startswith("cuda"):
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(args.device)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def open_run(args):
    """Resolves the run's settings (new or resumed), checks its folder, opens its data, builds
    the model and restores the checkpoint. Returns a Run, or None when there is nothing to do."""
    if args.out_dir:
        out = args.out_dir
    elif args.resume and args.resume != "auto":   # a named checkpoint continues in its own folder
        out = os.path.dirname(os.path.abspath(args.resume))
    else:
        out = os.path.join("runs", args.preset or ("structured64" if args.device.startswith("cuda")
                                                   else "structured32"))
    ck = read_resume(args, out)
    resolve(args, ck)
    if ck is not None and ck["step"] >= args.max_steps:
        print(f"{out}: the run is at step {ck['step']}, already at or past --max-steps "
              f"{args.max_steps}: nothing to do")
        return None
    rank, world = start_ranks(args)
    log = print if rank == 0 else (lambda *a, **k: None)
    if rank == 0 and ck is None:
        check_out_dir(out, args.overwrite, write=False)
    base = make_config(PRESETS[args.preset].config, args.set) if ck is None else Config.from_dict(ck["config"])
    ds, spec = open_data(args, ck, base, log)
    if rank == 0 and ck is None:
        check_out_dir(out, args.overwrite)
    if ck is None:   # the data set the model's length and channels
        base = make_config(replace(base, frames=ds.frames, channels=ds.channels), [])
    elif spec["fingerprint"] != ck["args"]["data"]["fingerprint"]:
        raise RunError("--resume: the data found differs from the run's: resume with the data it "
                       "was trained on")
    device = torch.device(args.device)
    model, opt_d, opt_eg = build(base, device, args.channels_last, args.seed)
    run = Run(args, base, out, device, ds, spec, model, model, opt_d, opt_eg, EMA(model),
              speedups(device)[0], rank, world, log=log)
    if ck is not None:
        restore(run, ck)
    if ck is None or rank > 0:
        torch.manual_seed(args.seed * 1000 + rank + run.step)   # ranks draw different noise
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        run.net = DDP(model, find_unused_parameters=True)
    if args.compile:
        run.net = torch.compile(run.net)
    return run


def restore(run, ck):
    """Loads weights, their average, optimiser states, step, time and RNG from a checkpoint."""
    try:
        run.model.load_state_dict(ck["model"])
        run.ema.load_state_dict(ck["ema"])
        run.opt_d.load_state_dict(ck["opt_d"])
        run.opt_eg.load_state_dict(ck["opt_eg"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise RunError(f"checkpoint does not fit this model ({str(e).splitlines()[0][:200]})") from None
    run.step, run.elapsed = ck["step"], ck.get("elapsed", 0.0)
    run.guard = copy.deepcopy(ck.get("guard", {}))
    run.ema.updates = run.step
    torch.set_rng_state(ck["rng"]["torch"])
    if run.device.type == "cuda" and "cuda" in ck["rng"]:
        torch.cuda.set_rng_state(ck["rng"]["cuda"])
    run.log(f"resumed from step {run.step} ({run.elapsed / 60:.1f} min trained)")


def start_line(run):
    a = run.args
    return (f"preset {a.preset} | device {run.device} | {speedups(run.device)[1]} | compile {a.compile} "
            f"| ranks {run.world} | batch {a.batch_size}/rank | "
            f"{sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M params | sampler "
            f"{sampler_backend(run.cfg, run.device)} | data {run.ds.describe()}: {len(run.ds)} training "
            f"videos of {run.cfg.frames} frames, {run.cfg.channels}x{run.cfg.size}x{run.cfg.size} | "
            f"up to {a.max_steps} steps or {a.time_limit:g} min | out {run.out}")


def save_checkpoint(run):
    if run.rank != 0:
        return
    rng = {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()}
                                               if run.device.type == "cuda" else {})}
    settings = {k: getattr(run.args, k) for k in FIXED + ("max_steps", "time_limit")}
    save_atomic({"version": CHECKPOINT_VERSION, "model": run.model.state_dict(),
                 "ema": run.ema.state_dict(), "opt_d": run.opt_d.state_dict(),
                 "opt_eg": run.opt_eg.state_dict(), "step": run.step, "elapsed": run.elapsed,
                 "config": asdict(run.cfg), "args": {**settings, "data": run.spec}, "rng": rng,
                 "guard": run.guard}, os.path.join(run.out, "ckpt.pt"))


def save_inference(run):
    """model.pt: the average's inference weights, config and data spec; what MDBiGAN.from_checkpoint
    and eval.py read, a tenth of ckpt.pt's size, and what pretrained/*.pt are."""
    settings = {k: getattr(run.args, k) for k in FIXED}
    save_atomic({"version": CHECKPOINT_VERSION, "ema": run.ema.state_dict(), "step": run.step,
                 "config": asdict(run.cfg), "args": {**settings, "data": run.spec}},
                os.path.join(run.out, "model.pt"))


def log_line(run, line):
    """Prints a line of the run's log and appends it to its log.txt (rank 0)."""
    run.log(line)
    if run.rank == 0:
        with open(os.path.join(run.out, "log.txt"), "a") as f:
            f.write(line + "\n")


class Meter:
    """Sums the loss terms on the device between log lines (one sync a line), and writes the line."""

    def __init__(self, run):
        self.run, self.sums, self.n, self.t0, self.wait = run, {}, 0, time.perf_counter(), 0.0

    def add(self, terms, wait):
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v.float()
        self.n, self.wait = self.n + 1, self.wait + wait

    def write(self, limit):
        run, a = self.run, self.run.args
        dt = (time.perf_counter() - self.t0) / self.n
        vals = {k: (v / self.n).item() for k, v in self.sums.items()}   # .item() syncs: here only
        left = min(a.max_steps - run.step, (limit - run.elapsed) / dt)
        line = (f"step {run.step} | " + " | ".join(f"{k} {v:.3f}" for k, v in vals.items())
                + f" | {dt * 1e3:.1f} ms | {a.batch_size * run.world / dt:.0f} videos/s | data wait "
                f"{self.wait / self.n * 1e3:.1f} ms | eta {left * dt / 60:.1f}m")
        log_line(run, line)
        if run.rank == 0:
            with open(os.path.join(run.out, "log.jsonl"), "a") as f:
                f.write(json.dumps({"step": run.step, "ms": dt * 1e3, **vals}) + "\n")
        self.sums, self.n, self.t0, self.wait = {}, 0, time.perf_counter(), 0.0


class Guard:
    """Rolls a diverging run back. A GAN can diverge late and for good: on Sprites, generic32's
    seed 1 went from a reconstruction error of 0.03 to 0.29 within 25 steps near the end of its
    3,000 and never recovered, and the only checkpoint left was the broken one. So at every log
    line whose mean reconstruction error is within `factor` of the median of the last `window`
    sound lines, the weights and buffers (the dependence measure's running moments among them),
    their average and both optimisers' states are copied (memory, not disk); at a line above
    that, the older of the last two copies is restored (a divergence that starts in a line's last
    steps hides in its mean), both learning rates are halved, and the run goes on with the
    following steps' batches and noise, so it does not replay the divergence. After `most`
    rollbacks it only warns: a run that keeps diverging needs other settings, not a learning rate
    halved towards zero. A sound run never reaches the restore, and is bit for bit what it was
    without the guard: a copy draws no random numbers. The sound lines' errors and the count
    travel in the checkpoint (run.guard), so a resumed run is guarded from its first line."""

    WINDOW = 8

    def __init__(self, run, factor, window=WINDOW, most=3):
        self.run, self.factor, self.window, self.most = run, factor, window, most
        run.guard.setdefault("history", [])
        run.guard.setdefault("rollbacks", 0)
        self.copies = deque([self.snapshot()] if run.guard["history"] and factor else [], maxlen=2)

    def check(self, rec, steps):
        """Called on log lines with the line's mean reconstruction error (a tensor on the device,
        or None when the config has none) over its `steps` steps; rolls back if it jumped.
        Returns True if it did."""
        run, state = self.run, self.run.guard
        if not self.factor or rec is None or 2 * steps < run.args.log_every:
            return False    # (a run's last line may hold a step or two: too few to judge)
        if run.world > 1:   # every rank must decide alike: they hold the same weights
            rec = rec.clone()
            torch.distributed.all_reduce(rec)
            rec /= run.world
        rec, history = rec.item(), state["history"]
        median = float(np.median(history)) if len(history) == self.window else None
        if median is not None and rec > self.factor * median:
            if state["rollbacks"] < self.most:
                self.restore(rec, median)
                return True
            if state["rollbacks"] == self.most:
                state["rollbacks"] += 1
                log_line(run, f"step {run.step}: the reconstruction error jumped to {rec:.3f} "
                              f"(median of the last {self.window} lines {median:.3f}) after "
                              f"{self.most} rollbacks: no more rollbacks in this run; if the error "
                              "stays high, train again with a lower --set lr=...")
        state["history"] = (history + [rec])[-self.window:]
        self.copies.append(self.snapshot())
        return False

    def snapshot(self):
        run, clone = self.run, lambda named: {k: v.detach().clone() for k, v in named}
        return {"step": run.step, "params": clone(run.model.named_parameters()),
                "buffers": clone(run.model.named_buffers()),
                "ema": clone(run.ema.avg.state_dict().items()),
                "opt_d": copy.deepcopy(run.opt_d.state_dict()),
                "opt_eg": copy.deepcopy(run.opt_eg.state_dict())}

    @torch.no_grad()
    def restore(self, rec, median):
        run, old = self.run, self.copies[0]
        lrs = [[g["lr"] for g in opt.param_groups] for opt in (run.opt_d, run.opt_eg)]
        for named, saved in ((run.model.named_parameters(), old["params"]),
                             (run.model.named_buffers(), old["buffers"])):
            for k, v in named:
                v.copy_(saved[k])
        run.ema.avg.load_state_dict(old["ema"])
        for name, opt, lr in zip(("opt_d", "opt_eg"), (run.opt_d, run.opt_eg), lrs):
            # a copy again: load_state_dict keeps the tensors it is given, and the steps update
            # them in place, which would change the copy a later rollback restores
            opt.load_state_dict(copy.deepcopy(old[name]))
            for g, r in zip(opt.param_groups, lr):
                g["lr"] = r / 2
        self.copies = deque([old], maxlen=2)
        run.guard["rollbacks"] += 1
        log_line(run, f"step {run.step}: the reconstruction error jumped to {rec:.3f} (median of "
                      f"the last {self.window} lines {median:.3f}, more than {self.factor:g}x): rolled "
                      f"back to the weights of step {old['step']}, learning rates halved to "
                      f"{lrs[1][0] / 2:.3g} (rollback {run.guard['rollbacks']} of at most {self.most})")



def train_loop(run):
    """Steps until max_steps, the time limit, a signal or a NaN; checkpoints, logs and pictures
    on their intervals. Returns the exit code (0, 3 for NaN, 128 + signal)."""
    a = run.args
    # batches are rendered ahead by threads (NumPy releases the GIL): at 256 videos of 64x64 one
    # thread could not keep up with a GPU; on the CPU one thread beside the step is enough
    ahead = 3 if run.device.type == "cuda" else 1
    fetch = lambda s: get_batch(run.ds, a.seed, run.rank, run.world, s, a.batch_size)
    pool = ThreadPoolExecutor(ahead)
    queue = deque(pool.submit(fetch, s) for s in range(run.step, run.step + ahead))
    bad = torch.zeros((), dtype=torch.bool, device=run.device)
    meter, code, guard = Meter(run), 0, Guard(run, a.rollback)
    limit = a.time_limit * 60 if a.time_limit > 0 else float("inf")
    while run.step < a.max_steps:
        t0 = time.perf_counter()
        videos = to_videos(queue.popleft().result(), run.device)
        queue.append(pool.submit(fetch, run.step + ahead))
        wait = time.perf_counter() - t0
        losses, terms = train_step(run.net, run.opt_d, run.opt_eg, videos, run.autocast, run.ema,
                                   iteration=run.step)
        run.step += 1
        bad |= ~torch.isfinite(losses).all()
        meter.add(terms, wait)
        run.elapsed += time.perf_counter() - t0
        finished = run.step == a.max_steps or run.elapsed > limit
        last = finished or run.stop["sig"] is not None
        if run.step % a.log_every == 0 or last:
            if bad.item():                                       # .item() syncs: on log steps only
                print(f"error: loss became NaN or inf by step {run.step}; stopping. The last good "
                      f"checkpoint (if any) is kept in {run.out}/ckpt.pt. Try a lower --set lr=...",
                      file=sys.stderr)
                code = 3
                break
            rec, steps = meter.sums["rec"] / meter.n if "rec" in meter.sums else None, meter.n
            meter.write(limit)
            guard.check(rec, steps)
        code = after_step(run, finished, last, limit)
        if code is not None:
            break
    pool.shutdown(wait=True)
    return code or 0


def after_step(run, finished, last, limit):
    """Priors, pictures and checkpoints due after a step; an exit code when the run ends there."""
    a = run.args
    if finished and run.rank == 0 and fit_priors(run.ema.avg, run.ds, a.seed):   # before the pictures
        run.log("fitted the sampling priors to the codes of up to 8,000 training videos")
    if run.rank == 0 and (run.step % a.sample_every == 0 or last):
        samples(run.ema.avg, run.ds, run.autocast, os.path.join(run.out, f"samples_{run.step:06d}.png"), run.step)
    if run.step % a.ckpt_every == 0 or last:
        save_checkpoint(run)
    if finished:
        if run.elapsed > limit:
            run.log(f"time limit of {a.time_limit:g} minutes reached at step {run.step}")
        return 0
    if run.stop["sig"] is not None:
        run.log(f"{signal.Signals(run.stop['sig']).name} received: saved {run.out}/ckpt.pt at step {run.step}")
        return 128 + run.stop["sig"]
    return None


def finish(run, code):
    """The loss plot (also when interrupted), the inference file of a finished run, the last line."""
    if run.world > 1:
        torch.distributed.destroy_process_group()
    if run.rank != 0:
        return
    plot_losses(os.path.join(run.out, "log.jsonl"), os.path.join(run.out, "losses.png"))
    if code == 0:
        save_inference(run)
        run.log(f"done: {run.step} steps in {run.elapsed / 60:.1f} min; checkpoint {run.out}/ckpt.pt, "
                f"inference weights {run.out}/model.pt; evaluate with: python eval.py {run.out}")


def main(argv=None):
    args = parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{cat.__name__}: {msg}\n"   # no source line
    try:
        if args.bench:
            return bench(args)
        run = open_run(args)
        if run is None:
            return 0
        run.log(start_line(run))
        handler = lambda signum, _: run.stop.update(sig=signum)
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = train_loop(run)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        finish(run, code)
        return code
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- priors and pictures

@torch.no_grad()
def fit_priors(model, ds, seed, n=8000):
    """Fits the mixtures that model.sample() draws z_C and eps from to E_C's codes and q's means on
    n training videos (ex-post density estimation); False if the config has none."""
    from sklearn.mixture import GaussianMixture
    if model.content_prior is None:
        return False
    items = np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False)
    device = next(model.parameters()).device
    codes = [model.prior_codes(to_videos(ds.clips(c)[0], device)) for c in np.array_split(items, -(-len(items) // 256))]
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


def strip(video):
    """A video [T, C, S, S] in [0, 1] -> one image [S, T * (S + 1), C] of its frames across."""
    v = np.pad(video.float().cpu().numpy(), ((0, 0), (0, 0), (0, 0), (0, 1)), constant_values=0.5)
    return v.transpose(2, 0, 3, 1).reshape(v.shape[2], -1, v.shape[1])


@torch.no_grad()
def samples(model, ds, autocast, path, step):
    """A labelled picture: 4 videos from the priors, then 4 real videos each above G(E_C(x), E(x))."""
    device = next(model.parameters()).device
    # its own RNG stream, so that pictures never change the training run (resume equality)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
        torch.manual_seed(step)
        fake = model.generate(*model.sample(4, device=device)).float()
        real = to_videos(ds.clips((np.arange(4) * 8 * 997 + np.arange(4)) % len(ds))[0], device)
        rec = model.generate(model.encode_content(real), model.encode_motion(real)).float()
    rows = [(f"sample {i + 1}", v) for i, v in enumerate(fake)]
    for i, x in enumerate(real):
        rows += [(f"real {i + 1}", x), ("recon", rec[i])]
    plt = _plt()
    T = real.shape[1]
    fig, axes = plt.subplots(len(rows), 1, figsize=(T * 0.5, len(rows) * 0.55 + 0.4), squeeze=False)
    for ax, (label, v) in zip(axes[:, 0], rows):
        img = strip(v)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img.clip(0, 1), cmap="gray", vmin=0, vmax=1)
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
