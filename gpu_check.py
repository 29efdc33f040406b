"""One GPU check of the whole project, within a few minutes, leaving every result in one folder.

Stages, each a subprocess with its own time limit, its output written to OUT_DIR as it runs
(a run cut short still leaves what it did; summary.txt says how each stage ended):
  1. versions.txt      the GPU, torch, triton, Python
  2. tests_gpu.log     the GPU-only tests (pytest -m gpu); "skipped (no tests ran)" when every one
                       was skipped or none was collected
  3. kernel_bench.log  python -m kernels.bench --quick
  4. train_bench.log   python train.py --bench: the training step of the default GPU preset and of
                       the paper preset; profile.txt: torch.profiler's top ops by GPU time
  5. run/              train.py, the default GPU preset for --minutes (log, losses, samples, ckpt)
  6. run/eval/         eval.py on that checkpoint, on the GPU: metrics.json and figures
  7. generic/, paper/  with --generic-minutes M / --paper-minutes M: the generic64 / paper preset
                       trained after 5 (while 6 runs in a background thread) and evaluated; each
                       adds M minutes and an evaluation: raise --budget to match
Works offline with torch, triton, numpy, scikit-learn and matplotlib. Without CUDA it stops at once,
unless --dry-run, which runs every stage at tiny size on the CPU (to test this script).

Usage:
    python gpu_check.py OUT_DIR --mnist-dir DIR               # ~8 minutes
    python gpu_check.py OUT_DIR --mnist-dir DIR --minutes 3 --generic-minutes 3 --budget 10
    python gpu_check.py OUT_DIR --mnist-dir DIR --minutes 5 --paper-minutes 5 --budget 17
    python gpu_check.py OUT_DIR --dry-run
"""
import argparse
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
_SUMMARY = threading.Lock()   # an evaluation's thread and the next training both record lines


@dataclass
class Check:
    """What every stage shares."""
    out: str                  # absolute OUT_DIR
    deadline: float           # time.monotonic() at which --budget runs out
    dry_run: bool             # tiny and on the CPU
    env: dict = field(default_factory=dict)    # the subprocesses' environment
    data: list = field(default_factory=list)   # ["--mnist-dir", DIR] or nothing
    dev: list = field(default_factory=list)    # ["--device", "cuda" or "cpu"]

    def left(self):
        return self.deadline - time.monotonic()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Check the project on one CUDA GPU.", allow_abbrev=False)
    p.add_argument("out_dir", help="folder for every log, metric, figure and checkpoint")
    p.add_argument("--mnist-dir", help="folder with the MNIST test-set IDX files (no download)")
    p.add_argument("--minutes", type=float, default=2.5, help="training time of the default "
                   "GPU preset (at most 5; default 2.5, so that the whole check fits 8 minutes)")
    p.add_argument("--generic-minutes", type=float, default=0.0, help="also train and evaluate "
                   "the generic64 preset this long (default 0: skip)")
    p.add_argument("--paper-minutes", type=float, default=0.0, help="also train and evaluate the "
                   "paper preset this long (default 0: skip)")
    p.add_argument("--budget", type=float, default=8.0, help="minutes for everything; stages "
                   "that would not fit are skipped (default 8)")
    p.add_argument("--dry-run", action="store_true", help="every stage at tiny size on the CPU")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 5:
        p.error(f"--minutes must be in (0, 5], got {args.minutes}")
    for k in ("generic_minutes", "paper_minutes"):
        if getattr(args, k) < 0:
            p.error(f"--{k.replace('_', '-')} must be >= 0, got {getattr(args, k)}")
    if args.mnist_dir and not os.path.isdir(args.mnist_dir):
        p.error(f"--mnist-dir {args.mnist_dir!r} is not a folder")
    return args


# pytest's last line, e.g. "3 passed, 6 skipped, 250 deselected, 1 warning in 3.1s"
SUMMARY_LINE = re.compile(
    r"\d+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)\b.* in [\d.]+s")
RAN = ("passed", "failed", "error", "errors", "xfailed", "xpassed")   # outcomes of tests that ran


def pytest_ran_nothing(rc, log_path):
    """True when pytest collected no test (exit code 5) or its summary line counts no test that
    ran (e.g. "6 skipped, 250 deselected in 3.1s"): every one was skipped."""
    if rc == 5:
        return True
    if rc != 0:
        return False
    with open(log_path) as f:
        summary = [line for line in f.read().splitlines() if SUMMARY_LINE.search(line)]
    if not summary:   # cut short before its summary: not a skip
        return False
    counts = {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary[-1])}
    return not any(counts.get(k) for k in RAN)


def stage(check, name, cmd, limit, log, need=0.0, pytest=False):
    """Runs cmd with its output in OUT_DIR/log, at most `limit` seconds and never past the budget
    (skipped when less than need + 10 s is left); records how it ended in summary.txt."""
    path = os.path.join(check.out, log)
    rc, dt = None, 0.0
    if check.left() < need + 10:
        status = "skipped (budget)"
    else:
        t0 = time.monotonic()
        with open(path, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=check.env,
                                    timeout=max(10, min(limit, check.left()))).returncode
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                status = "timed out"
        if pytest and pytest_ran_nothing(rc, path):
            status = "skipped (no tests ran)"
        dt = time.monotonic() - t0
    line = f"{name:16s} {status:22s} {dt:6.1f} s   {log}"
    with _SUMMARY:
        print(line, flush=True)
        with open(os.path.join(check.out, "summary.txt"), "a") as f:
            f.write(line + "\n")
    return rc


def versions_stage(check):
    """versions.txt: Python, torch and its CUDA, the GPU, triton; echoed to the console."""
    code = ("import platform, torch; print('python', platform.python_version()); "
            "print('torch', torch.__version__, 'cuda', torch.version.cuda); "
            "print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (dry run)')\n"
            "try:\n import triton; print('triton', triton.__version__)\n"
            "except ImportError: print('triton not installed')")
    stage(check, "versions", [PY, "-c", code], 60, "versions.txt")
    with open(os.path.join(check.out, "versions.txt")) as f:
        print("".join(f.readlines()[-4:]).strip(), flush=True)           # after the command


def gpu_tests_and_benchmarks(check):
    """The GPU tests, the kernel benchmark, and train.py's step benchmark with its profile."""
    stage(check, "gpu tests", [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], 150,
          "tests_gpu.log", pytest=True)
    stage(check, "kernel bench", [PY, "-m", "kernels.bench", "--quick"], 90, "kernel_bench.log")
    prof = os.path.join(check.out, "profile.txt")
    if os.path.exists(prof):
        os.remove(prof)
    bench = [PY, "train.py", "--bench", "2" if check.dry_run else "20", "--profile", prof, *check.dev]
    stage(check, "train bench", bench + (["--preset", "tiny"] if check.dry_run else []), 150,
          "train_bench.log")


def train_stage(check, folder, preset, minutes):
    """train.py for `minutes` into OUT_DIR/folder; True when it left a checkpoint."""
    run_dir = os.path.join(check.out, folder)
    steps = ["--max-steps", "4"] if check.dry_run else []
    train = [PY, "train.py", "--preset", preset, "--out-dir", run_dir, "--time-limit", str(minutes),
             "--sample-every", "250", *steps, *check.dev, *check.data]
    stage(check, f"train {folder}", train, minutes * 60 + 90, f"train_{folder}.log", need=minutes * 60)
    return os.path.exists(os.path.join(run_dir, "ckpt.pt"))


def eval_stage(check, folder):
    """eval.py on OUT_DIR/folder's checkpoint: metrics.json and figures in OUT_DIR/folder/eval."""
    videos = ["--max-videos", "64", "--judge-frames", "2000", "--judge-videos", "256"] if check.dry_run else []
    stage(check, f"eval {folder}", [PY, "eval.py", os.path.join(check.out, folder), *check.dev,
                                    *check.data, *videos], 240, f"eval_{folder}.log", need=60)


def train_and_eval_stages(check, runs):
    """Each (folder, preset, minutes) trained in turn (they would share the GPU); each evaluation,
    mostly scikit-learn on the CPU, runs in a thread beside the next training, joined at the end."""
    evals = []
    for folder, preset, minutes in runs:
        if train_stage(check, folder, preset, minutes):
            evals.append(threading.Thread(target=eval_stage, args=(check, folder)))
            evals[-1].start()
    for t in evals:
        t.join()


def main(argv=None):
    args = parse_args(argv)
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
    t_start = time.monotonic()
    check = Check(out=os.path.abspath(args.out_dir), deadline=t_start + args.budget * 60,
                  dry_run=args.dry_run, data=["--mnist-dir", args.mnist_dir] if args.mnist_dir else [],
                  dev=["--device", "cpu" if args.dry_run else "cuda"],
                  env={**os.environ, "PYTHONUNBUFFERED": "1", "MDBIGAN_OFFLINE": "1"})
    if args.dry_run:   # tiny and on the CPU: the kernels through Triton's interpreter
        check.env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    versions_stage(check)
    gpu_tests_and_benchmarks(check)
    runs = [("run", "tiny" if args.dry_run else "structured64", args.minutes)]
    for folder, preset, minutes in (("generic", "generic64", args.generic_minutes),
                                    ("paper", "paper", args.paper_minutes)):
        if minutes > 0:
            runs.append((folder, "tiny" if args.dry_run else preset, minutes))
    train_and_eval_stages(check, runs)
    print(f"done in {(time.monotonic() - t_start) / 60:.1f} min: {check.out}/summary.txt", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
