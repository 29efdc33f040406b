"""Trains MDBiGAN on MotionMNIST: one D step and one E/G step per iteration.

Usage:
    python train.py                                   # GPU: paper preset; else the CPU preset
    python train.py --device cuda --preset paper --mnist-dir DIR
    python train.py --preset cpu --out-dir runs/cpu   # ~20 minutes on a 2-core CPU
    python train.py --resume --out-dir runs/cpu       # continue from runs/cpu/ckpt.pt
    python train.py --preset cpu --set recon_weight=0 --set loss=bce   # any Config field
    torchrun --nproc_per_node=4 train.py --device cuda  # data-parallel (DDP), one shard a rank

Writes to --out-dir: ckpt.pt (atomic; model, optimisers, step, config, RNG states), log.txt
(one line per log interval), log.jsonl (the same numbers, for plots), samples_*.png
(generated videos and reconstructions, frames across) and losses.png.
Ctrl-C or SIGTERM saves a checkpoint first; a NaN/inf loss stops the run and keeps the last
good checkpoint. Then: python eval.py OUT_DIR/ckpt.pt
"""
import argparse
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, fields

import numpy as np
import torch

import data
from mdbigan import Config, MDBiGAN

PRESETS = {  # name -> (Config, batch size per rank, max steps, time limit in minutes or 0)
    "paper": (Config(), 32, 20000, 0),                       # the paper's sizes, for a GPU
    "cpu": (Config.small(ch=16, ch_max=64, d_hidden=128, recon_weight=10.0, adv_weight=0.1,
                         lr=1e-3, structured=True, prior_weight=1.0, sampler_hidden=32),
             16, 3000, 20),                                  # 2-core CPU, 20 minutes
    "tiny": (Config(frames=4, size=16, dim_z_c=8, dim_z_m=4, dim_eps=4, ch=4, ch_max=8,
                    d_hidden=16), 4, 4, 0),                  # tests and smoke runs
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train MDBiGAN on MotionMNIST.", allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when present)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model and schedule preset "
                   "(default: paper on CUDA, cpu otherwise)")
    p.add_argument("--out-dir", help="output folder (default runs/PRESET)")
    p.add_argument("--max-steps", type=int, help="iterations to train (default: the preset's)")
    p.add_argument("--time-limit", type=float, help="stop after this many minutes (0 = none; "
                   "default: the preset's)")
    p.add_argument("--batch-size", type=int, help="videos per step per rank (default: preset's)")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT_DIR/ckpt.pt "
                   "(or the checkpoint given)")
    p.add_argument("--mnist-dir", help="folder with the MNIST test-set IDX files (data.py)")
    p.add_argument("--variant", choices=["default", "hard"], default="default",
                   help="MotionMNIST variant to train on")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a Config field, e.g. --set loss=bce (repeatable)")
    p.add_argument("--log-every", type=int, default=25, help="steps between log lines")
    p.add_argument("--sample-every", type=int, default=500, help="steps between sample pictures")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--bench", type=int, metavar="STEPS", help="only time STEPS steps of every "
                   "preset on --device (synthetic videos, no files written) and exit")
    args = p.parse_args(argv)
    for k in ("max_steps", "batch_size", "log_every", "sample_every", "ckpt_every"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    args.preset = args.preset or ("paper" if args.device.startswith("cuda") else "cpu")
    return args, p


def make_config(args, parser, base):
    d = asdict(base)
    types = {f.name: f.type for f in fields(Config)}
    for item in args.set:
        k, _, v = item.partition("=")
        if k not in d or not _:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(d)}")
        t = type(d[k])
        try:
            d[k] = (v.lower() in ("1", "true", "yes")) if t is bool else t(v)
        except ValueError:
            parser.error(f"--set {item!r}: {k} must be {types[k]}")
    try:
        return Config.from_dict(d)
    except ValueError as e:
        parser.error(str(e))


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """Loads a checkpoint with weights_only=True; raises ValueError with a clear message."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many kinds for a bad file
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); use another one or start afresh")
    if not isinstance(ck, dict) or not {"model", "config", "step"} <= set(ck):
        raise ValueError(f"checkpoint {path} lacks model/config/step: not an MDBiGAN checkpoint")
    return ck


def batch_indices(seed, rank, world, step, n_items, batch):
    """The videos rank `rank` trains on at `step`: drawn from its own shard (items i with
    i % world == rank), a pure function of (seed, rank, step) so resuming replays them."""
    rng = np.random.default_rng([seed, rank, step])
    return rank + world * rng.integers(0, (n_items - rank + world - 1) // world, batch)


def _plt():
    import matplotlib
    matplotlib.use("Agg")                                        # files only, no display
    import matplotlib.pyplot as plt
    return plt


def save_grid(path, rows):
    """rows: list of float arrays [T, S, S] in [0, 1]; one row each, frames across."""
    plt = _plt()
    grid = np.concatenate([np.concatenate(list(np.pad(r, ((0, 0), (1, 1), (1, 1)), constant_values=0.5)), 1)
                           for r in rows], 0)
    plt.imsave(path, grid, cmap="gray", vmin=0, vmax=1)


def bench(args):
    """ms/step and videos/s of one D + one E/G step for each preset, on this machine."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"machine: {name}; torch {torch.__version__}; {'bf16 autocast' if cuda else 'fp32'}")
    for preset in ("tiny", "cpu", "paper"):
        cfg, batch, _, _ = PRESETS[preset]
        torch.manual_seed(0)
        model = MDBiGAN(cfg).to(device)
        net = torch.compile(model) if args.compile else model
        opt = torch.optim.Adam(model.parameters(), cfg.lr)
        x = torch.rand(batch, cfg.frames, 1, cfg.size, cfg.size, device=device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        for i in range(args.bench + 3):                          # 3 warm-up steps, not timed
            if i == 3:
                torch.cuda.synchronize() if cuda else None
                t0 = time.perf_counter()
            for step in ("d", "eg"):
                with autocast:
                    loss, _ = net(x, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        torch.cuda.synchronize() if cuda else None
        dt = (time.perf_counter() - t0) / args.bench
        print(f"{preset:6s} {cfg.size}x{cfg.size} T={cfg.frames} batch {batch:3d}: "
              f"{dt * 1e3:8.1f} ms/step  {batch / dt:8.1f} videos/s")
    return 0


def main(argv=None):
    args, parser = parse_args(argv)
    if args.bench:
        return bench(args)
    base, batch, steps, minutes = PRESETS[args.preset]
    batch = args.batch_size or batch
    max_steps = args.max_steps or steps
    minutes = minutes if args.time_limit is None else args.time_limit
    out = args.out_dir or os.path.join("runs", args.preset)

    ddp = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    if ddp:
        import torch.distributed as dist
        dev_type = "cuda" if args.device.startswith("cuda") else "cpu"
        dist.init_process_group("nccl" if dev_type == "cuda" else "gloo")
        if dev_type == "cuda":
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
    device = torch.device(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)

    # ---- checkpoint to resume, output folder
    ck = None
    cfg = make_config(args, parser, base) if not args.resume else None
    if args.resume:
        try:
            ck = load_checkpoint(os.path.join(out, "ckpt.pt") if args.resume == "auto" else args.resume)
            cfg = Config.from_dict(ck["config"])
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if rank == 0:
        try:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, ".write_test"), "w") as f:
                f.write("ok")
            os.remove(os.path.join(out, ".write_test"))
        except OSError as e:
            print(f"error: cannot write to output folder {out!r} ({e.strerror}); choose another "
                  "with --out-dir", file=sys.stderr)
            return 2

    # ---- data: each rank renders its own shard of the training split
    try:
        ds = data.MotionMNIST("train", args.mnist_dir, cfg.frames, cfg.size, variant=args.variant,
                              seed=args.seed, log=log)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def get_batch(step):
        videos, _, _ = ds.render(batch_indices(args.seed, rank, world, step, len(ds), batch))
        return torch.from_numpy(videos).unsqueeze(2)             # (B, T, 1, S, S) uint8

    # ---- model, optimisers
    torch.manual_seed(args.seed)                                 # same init on every rank
    model = MDBiGAN(cfg).to(device)
    d_img, d_vid = model.d_parameters()
    opt_eg = torch.optim.Adam(model.eg_parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam([{"params": d_img}, {"params": d_vid, "lr": cfg.lr * cfg.lr_dv_scale}],
                             cfg.lr, betas=(cfg.beta1, cfg.beta2))
    step = 0
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt_eg.load_state_dict(ck["opt_eg"])
            opt_d.load_state_dict(ck["opt_d"])
        except (RuntimeError, KeyError, ValueError) as e:
            print(f"error: checkpoint does not fit this model ({str(e).splitlines()[0][:200]})",
                  file=sys.stderr)
            return 2
        step = ck["step"]
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and "cuda" in ck["rng"]:
            torch.cuda.set_rng_state(ck["rng"]["cuda"])
        log(f"resumed from step {step}")
    if ck is None or rank > 0:
        torch.manual_seed(args.seed * 1000 + rank + step)        # ranks draw different noise
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, find_unused_parameters=True)
    if args.compile:
        net = torch.compile(net)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    n_par = sum(p.numel() for p in model.parameters())
    log(f"preset {args.preset} | device {device} | {'bf16 autocast, TF32' if cuda else 'fp32'}"
        f" | compile {args.compile} | ranks {world} | batch {batch}/rank | {n_par / 1e6:.2f}M params"
        f" | data {ds.source} ({args.variant}, {len(ds)} training videos) | out {out}")
    if args.preset == "cpu" and not args.device.startswith("cuda"):
        log(f"no GPU: the small CPU preset ({cfg.size}x{cfg.size}, ch {cfg.ch}), "
            f"{max_steps} steps or {minutes:g} minutes")

    # ---- signals: save, then exit
    stop = {"sig": None}

    def on_signal(signum, _frame):
        stop["sig"] = signum
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def checkpoint():
        if rank == 0:
            rng = {"torch": torch.get_rng_state()}
            if cuda:
                rng["cuda"] = torch.cuda.get_rng_state()
            save_atomic({"model": model.state_dict(), "opt_eg": opt_eg.state_dict(),
                         "opt_d": opt_d.state_dict(), "step": step, "config": asdict(cfg),
                         "args": {k: v for k, v in vars(args).items() if k != "set"},
                         "rng": rng}, os.path.join(out, "ckpt.pt"))

    def samples():
        if rank != 0:
            return
        model.eval()
        # its own RNG stream, so that pictures never change the training run (resume equality)
        with torch.random.fork_rng(devices=[device] if cuda else []), torch.no_grad(), autocast:
            torch.manual_seed(step)
            z_c, z_m = model.sample(6, device)
            fake = model.generate(z_c, z_m).float()
            real = get_batch(2 ** 40)[:6].to(device).float() / 255
            rows = [v[:, 0] for v in fake.cpu().numpy()]
            if model.enc_c is not None:
                rec = model.generate(model.encode_content(real), model.encode_motion(real)).float()
                for r, x in zip(rec.cpu().numpy(), real.cpu().numpy()):
                    rows += [x[:, 0], r[:, 0]]
        model.train()
        save_grid(os.path.join(out, f"samples_{step:06d}.png"), rows)

    # ---- the loop
    log_path, jsonl_path = os.path.join(out, "log.txt"), os.path.join(out, "log.jsonl")
    pool = ThreadPoolExecutor(1)                                 # renders the next batch meanwhile
    nxt = pool.submit(get_batch, step)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    sums, n_sum, t_log, t_start, wait = {}, 0, time.perf_counter(), time.perf_counter(), 0.0
    start_step, code = step, 0
    while step < max_steps:
        t0 = time.perf_counter()
        videos = nxt.result()
        nxt = pool.submit(get_batch, step + 1)
        wait += time.perf_counter() - t0
        videos = videos.to(device, non_blocking=True).float() / 255
        with autocast:
            d_loss, d_logs = net(videos, "d")
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with autocast:
            g_loss, g_logs = net(videos, "eg")
        opt_eg.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_eg.step()
        step += 1
        bad |= ~(torch.isfinite(d_loss) & torch.isfinite(g_loss))
        for k, v in {**d_logs, **g_logs}.items():
            sums[k] = sums.get(k, 0) + v.float()
        n_sum += 1
        elapsed = time.perf_counter() - t_start
        out_of_time = minutes > 0 and elapsed > minutes * 60
        last = step == max_steps or out_of_time or stop["sig"] is not None
        if step % args.log_every == 0 or last:
            if bad.item():
                print(f"error: loss became NaN or inf by step {step}; stopping. The last good "
                      f"checkpoint (if any) is kept in {out}/ckpt.pt. Try a lower --set lr=...",
                      file=sys.stderr)
                code = 3
                break
            dt = (time.perf_counter() - t_log) / n_sum
            vals = {k: (v / n_sum).item() for k, v in sums.items()}
            rate = batch * world / dt
            left = min(max_steps - step, (minutes * 60 - elapsed) / dt if minutes > 0 else math.inf)
            line = (f"step {step} | " + " | ".join(f"{k} {v:.3f}" for k, v in vals.items())
                    + f" | {dt * 1e3:.1f} ms | {rate:.0f} videos/s | data wait "
                    f"{wait / n_sum * 1e3:.1f} ms | eta {left * dt / 60:.1f}m")
            log(line)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(line + "\n")
                with open(jsonl_path, "a") as f:
                    f.write(json.dumps({"step": step, "ms": dt * 1e3, **vals}) + "\n")
            sums, n_sum, t_log, wait = {}, 0, time.perf_counter(), 0.0
        if step % args.sample_every == 0 or last:
            samples()
        if step % args.ckpt_every == 0 or last:
            checkpoint()
        if out_of_time:
            log(f"time limit of {minutes:g} minutes reached at step {step}")
            break
        if stop["sig"] is not None:
            log(f"{signal.Signals(stop['sig']).name} received: saved {out}/ckpt.pt at step {step}")
            code = 128 + stop["sig"]
            break
    pool.shutdown(wait=True)
    [signal.signal(s, h) for s, h in old.items()]
    if ddp:
        import torch.distributed as dist
        # every rank must end with the same weights; shards must differ
        digest = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        first = torch.tensor(batch_indices(args.seed, rank, world, start_step, len(ds), batch)[:1],
                             dtype=torch.float64)
        got = [torch.zeros_like(digest) for _ in range(world)]
        shards = [torch.zeros_like(first) for _ in range(world)]
        dist.all_gather(got, digest.cpu() if not cuda else digest)
        dist.all_gather(shards, first if not cuda else first.to(device))
        log(f"ddp check: weight digests {[round(g.item(), 6) for g in got]} "
            f"({'identical' if len({g.item() for g in got}) == 1 else 'DIFFERENT'}); "
            f"first video of each rank {[int(s.item()) for s in shards]}")
        dist.destroy_process_group()
    if code == 0 and rank == 0:
        plot_losses(jsonl_path, os.path.join(out, "losses.png"))
        log(f"done: {step} steps in {(time.perf_counter() - t_start) / 60:.1f} min; "
            f"checkpoint {out}/ckpt.pt; evaluate with: python eval.py {out}/ckpt.pt")
    return code


def plot_losses(jsonl_path, png):
    plt = _plt()
    rows = [json.loads(line) for line in open(jsonl_path)] if os.path.exists(jsonl_path) else []
    if not rows:
        return
    keys = [k for k in rows[-1] if k not in ("step", "ms")]
    adv = [k for k in keys if k in ("d_i", "d_v", "g", "r1")]   # the rest are >= 0: log scale
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
