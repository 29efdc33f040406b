"""One GPU check of the whole project, within a few minutes, leaving every result in one folder.

Stages, each a subprocess with its own time limit, its output written to OUT_DIR as it runs
(a run cut short still leaves what it did; summary.txt says how each stage ended):
  1. versions.txt      the GPU, torch, triton, Python
  2. tests_gpu.log     the GPU-only tests (pytest -m gpu)
  3. kernel_bench.log  python -m kernels.bench --quick
  4. train_bench.log   python train.py --bench: the training step of the default GPU preset and of
                       the paper preset; profile.txt: torch.profiler's top ops by GPU time
  5. run/              train.py, the default GPU preset for --minutes (log, losses, samples, ckpt)
  6. run/eval/         eval.py on that checkpoint, on the GPU: metrics.json and figures
  7. paper/            with --paper-minutes M: the paper preset trained after 5 (while 6 runs) and
                       evaluated; this adds M minutes and an evaluation: raise --budget to match
Works offline with torch, triton, numpy, scikit-learn and matplotlib. Without CUDA it stops at once,
unless --dry-run, which runs every stage at tiny size on the CPU (to test this script).

Usage:
    python gpu_check.py OUT_DIR --mnist-dir DIR               # ~8 minutes
    python gpu_check.py OUT_DIR --mnist-dir DIR --minutes 5 --paper-minutes 5 --budget 17
    python gpu_check.py OUT_DIR --dry-run
"""
import argparse
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description="Check the project on one CUDA GPU.", allow_abbrev=False)
    p.add_argument("out_dir", help="folder for every log, metric, figure and checkpoint")
    p.add_argument("--mnist-dir", help="folder with the MNIST test-set IDX files (no download)")
    p.add_argument("--minutes", type=float, default=2.5, help="training time of the default "
                   "GPU preset (at most 5; default 2.5, so that the whole check fits 8 minutes)")
    p.add_argument("--paper-minutes", type=float, default=0.0, help="also train and evaluate the "
                   "paper preset this long (default 0: skip)")
    p.add_argument("--budget", type=float, default=8.0, help="minutes for everything; stages "
                   "that would not fit are skipped (default 8)")
    p.add_argument("--dry-run", action="store_true", help="every stage at tiny size on the CPU")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 5:
        p.error(f"--minutes must be in (0, 5], got {args.minutes}")
    if args.paper_minutes < 0:
        p.error(f"--paper-minutes must be >= 0, got {args.paper_minutes}")
    if args.mnist_dir and not os.path.isdir(args.mnist_dir):
        p.error(f"--mnist-dir {args.mnist_dir!r} is not a folder")
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; this check needs one (or use --dry-run to test the script "
              "on the CPU)", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create {args.out_dir!r} ({e.strerror})", file=sys.stderr)
        return 2
    out, t_start = os.path.abspath(args.out_dir), time.monotonic()
    py = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MDBIGAN_OFFLINE": "1"}
    if args.dry_run:   # tiny and on the CPU: the kernels through Triton's interpreter
        env = {**env, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    data = ["--mnist-dir", args.mnist_dir] if args.mnist_dir else []
    dev = ["--device", "cpu" if args.dry_run else "cuda"]

    def left():
        return args.budget * 60 - (time.monotonic() - t_start)

    def stage(name, cmd, limit, log, need=0.0):
        """Runs cmd with its output in OUT_DIR/log; records how it ended in summary.txt."""
        if left() < need + 10:
            status, rc, dt = "skipped (budget)", None, 0.0
        else:
            t0 = time.monotonic()
            with open(os.path.join(out, log), "w") as f:
                f.write("$ " + " ".join(cmd) + "\n")
                f.flush()
                try:
                    rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                        timeout=max(10, min(limit, left()))).returncode
                    status = "ok" if rc == 0 else f"failed (exit {rc})"
                except subprocess.TimeoutExpired:
                    rc, status = None, "timed out"
            dt = time.monotonic() - t0
        line = f"{name:16s} {status:18s} {dt:6.1f} s   {log}"
        print(line, flush=True)
        with open(os.path.join(out, "summary.txt"), "a") as f:
            f.write(line + "\n")
        return rc

    code = (f"import platform, torch; print('python', platform.python_version()); "
            f"print('torch', torch.__version__, 'cuda', torch.version.cuda); "
            f"print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (dry run)')\n"
            f"try:\n import triton; print('triton', triton.__version__)\n"
            f"except ImportError: print('triton not installed')")
    stage("versions", [py, "-c", code], 60, "versions.txt")
    with open(os.path.join(out, "versions.txt")) as f:
        print("".join(f.readlines()[-4:]).strip(), flush=True)           # after the command
    stage("gpu tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], 150, "tests_gpu.log")
    stage("kernel bench", [py, "-m", "kernels.bench", "--quick"], 90, "kernel_bench.log")
    prof = os.path.join(out, "profile.txt")
    if os.path.exists(prof):
        os.remove(prof)
    bench = [py, "train.py", "--bench", "2" if args.dry_run else "20", "--profile", prof, *dev]
    stage("train bench", bench + (["--preset", "tiny"] if args.dry_run else []), 150, "train_bench.log")

    runs = [("run", "tiny" if args.dry_run else "structured64", args.minutes)]
    if args.paper_minutes > 0:
        runs.append(("paper", "tiny" if args.dry_run else "paper", args.paper_minutes))
    def train_and_eval(folder, preset, minutes):
        run_dir = os.path.join(out, folder)
        steps = ["--max-steps", "4"] if args.dry_run else []
        train = [py, "train.py", "--preset", preset, "--out-dir", run_dir, "--time-limit", str(minutes),
                 "--sample-every", "250", *steps, *dev, *data]
        stage(f"train {folder}", train, minutes * 60 + 90, f"train_{folder}.log", need=minutes * 60)
        os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)      # (the next training may start)
        if os.path.exists(os.path.join(run_dir, "ckpt.pt")):
            videos = ["--max-videos", "64", "--judge-frames", "2000"] if args.dry_run else []
            stage(f"eval {folder}", [py, "eval.py", run_dir, *dev, *data, *videos], 240,
                  f"eval_{folder}.log", need=60)

    # one training at a time (they would share the GPU); an evaluation, mostly scikit-learn on the
    # CPU, runs beside the next training
    evals = []
    for folder, preset, minutes in runs:
        evals.append(threading.Thread(target=train_and_eval, args=(folder, preset, minutes)))
        evals[-1].start()
        while evals[-1].is_alive() and not os.path.exists(os.path.join(out, folder, "eval")):
            time.sleep(1)                                       # until its training has ended
    for t in evals:
        t.join()
    print(f"done in {(time.monotonic() - t_start) / 60:.1f} min: {out}/summary.txt", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
