"""Benchmark of the fused GRU-with-feedback kernel against the loops people write instead.

Rows, for each (B, H, steps) and for the forward and forward+backward, in ms:
  eager     a Python loop of nn.GRUCell + nn.Linear (what MoCoGAN-style code does)
  compiled  the same loop under torch.compile(mode="reduce-overhead"), which replays it in a CUDA
            graph; compiling every shape takes long, so by default only a few (--compile-all)
  fused     gru_feedback(..., backend="triton") as users call it, eagerly: host time included
  graph     the same fused call replayed in a CUDA graph: the GPU's time without the host's
  kernel    the fused forward kernel's own GPU time (torch.profiler), in us
Times are medians of triton.testing.do_bench (the fused row's quantiles 0.2 and 0.8 shown),
warm-up and compilation excluded; speed-ups are eager / fused and compiled / fused.

--aot needs no GPU: it compiles both kernels at every configuration the launch tables can choose
(each padded H up to MAX_H; "aligned" H = 16, 32, 64 with E = 16 as the presets launch, and
"unaligned" H = 15, 31, 63 with E = 5 and unaligned tensors) for an A100 (sm_80) and an H100
(sm_90) through triton.compile with a GPUTarget, reads each cubin's registers and stack with the
cuobjdump inside the triton wheel, and prints a row each: registers (255 at most a thread), stack
(bytes spilled), shared memory against the target's per-block limit, "fits" / "spills" / "cannot
launch", and the compile's seconds ("cached": reloaded from Triton's cache, ~/.triton/cache).

Usage:
    python -m kernels.bench                  # the full table on a GPU; the reference on a CPU
    python -m kernels.bench --quick          # B in {64, 1024}, H in {16, 64}, steps 20
    python -m kernels.bench --compile-all    # compiled rows for every shape (slow to compile)
    python -m kernels.bench --precision tf32 # the kernels' opt-in TF32 products
    python -m kernels.bench --tune           # measure BLOCK_B, num_warps, hoist, split per H:
                                             # prints the FWD_TUNING / BWD_TUNING tables to paste
    python -m kernels.bench --aot [--arch 80 90] [--variant aligned unaligned] [--precision tf32]
                                             # no GPU needed: ~1 min cold on 2 cores, 2 s cached
"""
import argparse
import itertools
import platform
import re
import time
import warnings

import torch

from kernels import fused_recurrent as fr
from kernels.fused_recurrent import gru_feedback

QUANTILES = [0.5, 0.2, 0.8]   # median first: do_bench returns them in this order
# the shapes whose compiled rows are timed by default (each compile takes long)
COMPILE_AT = {(64, 16, 20), (1024, 64, 20), (64, 64, 64), (4096, 64, 20)}


def make_modules(B, H, E, device):
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(E, H).to(device)
    lin = torch.nn.Linear(H, E, bias=False).to(device)
    eps = torch.randn(B, E, device=device, requires_grad=True)
    return cell, lin, eps


def eager_loop(cell, lin, eps, steps):
    h = eps.new_zeros(eps.shape[0], cell.hidden_size)
    e, out = eps, []
    for _ in range(steps):
        h = cell(e, h)
        out.append(h)
        e = lin(h)
    return torch.stack(out, 1)


def fused(cell, lin, eps, steps, precision="ieee"):
    return gru_feedback(eps, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                        lin.weight, steps, backend="triton", precision=precision)


def cuda_graph(run):
    """run() captured once in a CUDA graph (after a warm-up on a side stream); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def kernel_us(run, name="_fwd_kernel", n=20):
    """The mean GPU time of the kernel `name` over n calls of run(), from torch.profiler, in us."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            run()
        torch.cuda.synchronize()
    hits = [e for e in prof.key_averages() if name in e.key]
    return sum(e.device_time_total for e in hits) / max(1, sum(e.count for e in hits))


def tune(precision, Bs=(64, 1024), steps=20):
    """For each padded H up to MAX_H, the forward's (BLOCK_B, num_warps, hoist) and the backward's
    (BLOCK_B, num_warps, hoist, split) with the least summed median time over Bs; prints
    `precision`'s tables (for tf32 the *_TF32 ones, which override the others entry by entry).
    Configurations that fail to compile or launch (registers, shared memory) are skipped; those
    that spill run, slowly: `--aot` says which."""
    import triton
    fuse = lambda c, l, e, s: fused(c, l, e, s, precision)
    sfx = "_TF32" if precision == "tf32" else ""
    tables = {"FWD_TUNING" + sfx: dict(getattr(fr, "FWD_TUNING" + sfx)),
              "BWD_TUNING" + sfx: dict(getattr(fr, "BWD_TUNING" + sfx))}
    shape = itertools.product((8, 16, 32), (2, 4, 8), (True, False))
    candidates = {"FWD_TUNING" + sfx: list(shape)}
    candidates["BWD_TUNING" + sfx] = [c + (split,) for c in candidates["FWD_TUNING" + sfx]
                                      for split in (1, 2, 4)]
    for H in sorted(fr.FWD_TUNING):
        for name in tables:
            best = None
            for cand in candidates[name]:
                getattr(fr, name)[H] = cand
                total = 0.0
                try:
                    for B in Bs:
                        cell, lin, eps = make_modules(B, H, 16, "cuda")   # E = 16: the presets'
                        mode = "fwd" if name.startswith("FWD") else "fwd+bwd"
                        run = runner(fuse, cell, lin, eps, steps, mode)
                        total += triton.testing.do_bench(run)
                except Exception as e:  # noqa: BLE001 -- a configuration that does not compile
                    print(f"H={H} {name} {cand}: skipped ({type(e).__name__})")
                    continue
                print(f"H={H} {name} {cand}: {total:.3f} ms over B in {Bs}", flush=True)
                if best is None or total < best[0]:
                    best = (total, cand)
            tables[name][H] = best[1]
            getattr(fr, name)[H] = best[1]      # the backward is tuned with the best forward
    print(f"\n# measured on {torch.cuda.get_device_name()}, steps {steps}, precision {precision}; "
          "check them with python -m kernels.bench --aot before pasting")
    for name, table in tables.items():
        print(f"{name} = {table}")


# ------------------------------------------------------------------ --aot: the kernels compiled for
# GPUs that are not here. triton.compile with an explicit GPUTarget runs the whole NVIDIA pipeline
# (TTIR -> TTGIR -> LLVM -> PTX -> ptxas) on the CPU; the cubin's resource usage comes from the
# cuobjdump shipped inside the triton wheel. Results land in Triton's cache (~/.triton/cache or
# $TRITON_CACHE_DIR), so a second run only reloads them.
# per-block limits of each target: cudaDevAttrMaxSharedMemoryPerBlockOptin (bytes), and the
# 64K 32-bit registers of a block on both (a thread may hold 255)
AOT_TARGETS = {80: ("A100", 166912), 90: ("H100", 232448)}
REGS_PER_BLOCK = 65536


def aot_toolchain_missing():
    """What --aot needs and this triton lacks (a clause), or None: its NVIDIA backend, with the
    ptxas and cuobjdump that ship inside the wheel (triton/backends/nvidia/bin)."""
    if fr.triton is None:
        return "triton is not installed"
    try:
        from triton import knobs
        from triton.backends import backends
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e:
        return f"triton {fr.triton.__version__} lacks what --aot uses ({e})"
    if "nvidia" not in backends:
        return f"triton {fr.triton.__version__} has no NVIDIA backend (backends: {sorted(backends)})"
    for tool in ("ptxas", "cuobjdump"):
        try:
            getattr(knobs.nvidia, tool).path
        except RuntimeError:
            return f"triton's NVIDIA backend has no {tool} (triton/backends/nvidia/bin/{tool})"
    return None


def aot_unavailable():
    """Why the kernels cannot be compiled ahead of time in this process (a clause), or None."""
    if fr.INTERPRET:
        return ("TRITON_INTERPRET=1 makes the kernels interpreted functions, which do not compile: "
                "run without it (env -u TRITON_INTERPRET python -m kernels.bench --aot)")
    return aot_toolchain_missing()


# the specialisations compiled for each configuration: Triton compiles one variant per launch
# signature, so (H, E) and the pointers' alignment choose code. "aligned": H = the padded size,
# E = 16 (the presets' E) and 16-byte aligned tensors, as the presets launch; "unaligned": H one
# below it, E = 5 and no alignment, as a size that is no multiple of 16 (or a view at an odd
# offset) launches. E chooses no configuration: the kernels run over it in fixed chunks.
AOT_VARIANTS = {"aligned": (lambda BH: BH, 16, True), "unaligned": (lambda BH: BH - 1, 5, False)}


def _aot_source(kernel, H, E, cfg, aligned=True, precision="ieee"):
    """ASTSource of `kernel` as a launch with these sizes specialises it: pointers fp32 (16-byte
    aligned where `aligned`), B and T plain i32 (do_not_specialize), H and E i32, divisible by 16
    where they are (or the constant 1), the launch table's constexprs and `precision`."""
    from triton.compiler import ASTSource
    consts = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    consts["PRECISION"] = precision
    signature, constexprs, attrs = {}, {}, {}
    for p in kernel.params:
        if p.name in consts:
            signature[p.name], constexprs[p.name] = "constexpr", consts[p.name]
        elif p.name.startswith("p_"):
            signature[p.name] = "*fp32"
            if aligned:
                attrs[(p.num,)] = [["tt.divisibility", 16]]
        elif p.name in ("H", "E") and dict(H=H, E=E)[p.name] == 1:
            signature[p.name], constexprs[p.name] = "constexpr", 1
        else:
            signature[p.name] = "i32"
            if p.name in ("H", "E") and dict(H=H, E=E)[p.name] % 16 == 0:
                attrs[(p.num,)] = [["tt.divisibility", 16]]
    return ASTSource(kernel, signature, constexprs, attrs)


def resource_usage(cubin):
    """REG, STACK, SHARED (static), LOCAL of the one kernel in `cubin` (bytes), from
    cuobjdump --dump-resource-usage."""
    import subprocess
    import tempfile
    from triton import knobs
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if "REG" not in found:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return {k.lower(): int(v) for k, v in found.items()}


def aot_compile(name, arch, variant="aligned", BH=16, cfg=None, precision="ieee", sizes=None):
    """Compiles the forward ("fwd") or backward ("bwd") kernel for sm_<arch> in `variant`
    (AOT_VARIANTS) at padded size BH, or at sizes = (H, E, aligned) (variant "custom"), with
    `precision` and _launch_config's configuration or `cfg` (one to try);
    returns a row: the sizes and configuration, registers, stack (spills), shared memory
    (Triton's allocation, what its launcher checks against the limit), the target's limit, the
    verdict and the compile's seconds (cached: Triton's cache had it, and it was only reloaded)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    if sizes is not None:
        (H, E, aligned), variant = sizes, "custom"
    else:
        size, E, aligned = AOT_VARIANTS[variant]
        H = size(BH)
    kernel = fr._bwd_kernel if name == "bwd" else fr._fwd_kernel
    cfg = cfg or fr._launch_config(H, E, backward=name == "bwd", precision=precision)
    hits, listener = [], knobs.compilation.listener
    knobs.compilation.listener = lambda **kw: hits.append(kw.get("cache_hit", False))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # triton 3.9 notes that 3.10 changes the FP-fusion default: this compile takes the
            # default, as a launch does
            warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
            compiled = triton.compile(_aot_source(kernel, H, E, cfg, aligned, precision),
                                      target=GPUTarget("cuda", arch, 32),
                                      options=dict(num_warps=cfg["num_warps"],
                                                   num_stages=cfg["num_stages"]))
    finally:
        knobs.compilation.listener = listener
    seconds = time.perf_counter() - t0
    use = resource_usage(compiled.asm["cubin"])
    gpu, limit = AOT_TARGETS[arch]
    if compiled.metadata.shared > limit or use["reg"] * 32 * cfg["num_warps"] > REGS_PER_BLOCK:
        verdict = "cannot launch"
    elif use["stack"] > 0:
        verdict = "spills"
    else:
        verdict = "fits"
    return dict(kernel=name, arch=arch, gpu=gpu, variant=variant, precision=precision, H=H, E=E,
                BH=cfg["BH"], BLOCK_B=cfg["BLOCK_B"], num_warps=cfg["num_warps"], HOIST=cfg["HOIST"],
                SPLIT=cfg.get("SPLIT", 1), regs=use["reg"], stack=use["stack"],
                shared=compiled.metadata.shared, limit=limit, verdict=verdict, seconds=seconds,
                cached=any(hits))


AOT_HEADER = (f"{'arch':5} {'kernel':6} {'variant':9} {'H':>3} {'E':>3} | {'BLOCK_B':>7} {'warps':>5} "
              f"{'hoist':>5} {'split':>5} | {'regs':>4} {'stack B':>7} {'shared B':>8} {'limit B':>8} | "
              f"{'verdict':13} {'compile s':>9}")


def format_aot_row(r):
    """aot_compile's row as one line under AOT_HEADER."""
    split = str(r["SPLIT"]) if r["kernel"] == "bwd" else "-"
    return (f"sm_{r['arch']:<2} {r['kernel']:6} {r['variant']:9} {r['H']:3d} {r['E']:3d} | "
            f"{r['BLOCK_B']:7d} {r['num_warps']:5d} {str(r['HOIST']):>5} {split:>5} | {r['regs']:4d} "
            f"{r['stack']:7d} {r['shared']:8d} {r['limit']:8d} | {r['verdict']:13} {r['seconds']:9.1f}"
            + (" cached" if r["cached"] else ""))


def aot_table(archs=tuple(AOT_TARGETS), variants=tuple(AOT_VARIANTS), precision="ieee", out=print):
    """Compiles every configuration the launch tables can choose, in each variant, for each
    sm_<arch> with `precision`, printing a row each as it is done; returns the rows."""
    import triton
    why = aot_unavailable()
    if why is not None:
        raise SystemExit(f"kernels.bench --aot: {why}")
    unknown = sorted(set(archs) - set(AOT_TARGETS))
    if unknown:
        raise SystemExit(f"kernels.bench --aot: --arch {unknown} unknown; known: {sorted(AOT_TARGETS)}")
    out(f"ahead-of-time compile, no GPU: triton {triton.__version__}, precision {precision}, "
        f"MAX_H = {fr.MAX_H}; per block "
        + ", ".join(f"sm_{a} ({AOT_TARGETS[a][0]}): {AOT_TARGETS[a][1]} B shared" for a in archs)
        + f"; {REGS_PER_BLOCK} registers, 255 a thread")
    out(AOT_HEADER)
    out("-" * len(AOT_HEADER))
    rows = []
    for arch in archs:
        for BH in sorted(fr.FWD_TUNING):
            if BH > fr.MAX_H:
                continue
            for variant in variants:
                for name in ("fwd", "bwd"):
                    rows.append(aot_compile(name, arch, variant, BH, precision=precision))
                    out(format_aot_row(rows[-1]))
    bad = [r for r in rows if r["verdict"] != "fits"]
    out(f"\n{len(rows) - len(bad)} of {len(rows)} fit, {sum(r['seconds'] for r in rows):.0f} s of "
        "compiles; " + ("; ".join(f"sm_{r['arch']} {r['kernel']} {r['variant']} H={r['H']}: {r['verdict']}"
                                  for r in bad) or "none spills or fails to launch"))
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark the fused GRU-with-feedback kernel.")
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--compile-all", action="store_true", help="compiled rows for every shape")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--precision", choices=["ieee", "tf32"], default="ieee",
                   help="the fused kernels' matrix products (default: exact fp32)")
    p.add_argument("--tune", action="store_true", help="measure the launch tables instead")
    p.add_argument("--aot", action="store_true",
                   help="compile every launch-table configuration for --arch without a GPU and "
                        "print registers, stack, shared memory against the limit")
    p.add_argument("--arch", type=int, nargs="+", default=sorted(AOT_TARGETS),
                   help=f"--aot's targets, compute capability x10 (default: {sorted(AOT_TARGETS)})")
    p.add_argument("--variant", nargs="+", choices=sorted(AOT_VARIANTS), default=list(AOT_VARIANTS),
                   help="--aot's specialisations (default: both)")
    return p.parse_args(argv)


def cpu_reference_table(seconds=0.5):
    """Without a GPU: the reference's time per call on the CPU, each shape run for `seconds`."""
    print(f"no GPU: timing the PyTorch reference on the CPU ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads); the Triton kernel needs CUDA")
    for B, H, steps in [(64, 16, 20), (256, 64, 20), (1024, 128, 64)]:
        cell, lin, eps = make_modules(B, H, H, "cpu")
        for mode in ("fwd", "fwd+bwd"):
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                z = gru_feedback(eps, cell.weight_ih, cell.weight_hh, cell.bias_ih,
                                 cell.bias_hh, lin.weight, steps, backend="torch")
                if mode == "fwd+bwd":
                    z.sum().backward()
                n += 1
            print(f"B={B:5d} H={H:4d} steps={steps:3d} {mode:8s} reference "
                  f"{(time.perf_counter() - t0) / n * 1e3:8.3f} ms")


def print_header():
    """The machine, the versions and an empty Triton launch (the floor of any fused call), then
    the table's column names; returns the GPU's name."""
    import triton

    @triton.jit
    def _empty_kernel(p):
        pass

    dev = torch.cuda.get_device_name()
    print(f"GPU: {dev}; torch {torch.__version__}, triton {triton.__version__}")
    dummy = torch.empty(1, device="cuda")
    t_empty = triton.testing.do_bench(lambda: _empty_kernel[(1,)](dummy), quantiles=QUANTILES)
    print(f"empty Triton launch: {t_empty[0] * 1e3:.1f} us (p20 {t_empty[1] * 1e3:.1f}, "
          f"p80 {t_empty[2] * 1e3:.1f})\n")
    hdr = (f"{'B':>5} {'H':>4} {'T':>3} {'mode':8} | {'eager':>8} {'compiled':>8} {'fused':>8} "
           f"[p20-p80]       {'graph':>8} {'kernel us':>9} | {'x eager':>7} {'x compiled':>10}")
    print(hdr)
    print("-" * len(hdr))
    return dev


def runner(fn, cell, lin, eps, steps, mode):
    """A no-argument call of fn(cell, lin, eps, steps): under no_grad for "fwd", with the backward
    of the sum for "fwd+bwd"."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(cell, lin, eps, steps)
    else:
        def run():
            fn(cell, lin, eps, steps).sum().backward()
    return run


def time_shape(cell, lin, eps, steps, mode, precision, compiled):
    """One row's times: do_bench quantiles (ms) of eager, fused, fused in a CUDA graph, and with
    `compiled` the reduce-overhead compiled loop (else None); the forward kernel's own us."""
    import triton
    bench = lambda run: triton.testing.do_bench(run, quantiles=QUANTILES)
    fuse = lambda c, l, e, s: fused(c, l, e, s, precision)
    row = dict(eager=bench(runner(eager_loop, cell, lin, eps, steps, mode)),
               fused=bench(runner(fuse, cell, lin, eps, steps, mode)),
               graph=bench(cuda_graph(runner(fuse, cell, lin, eps, steps, mode))),
               kernel_us=kernel_us(runner(fuse, cell, lin, eps, steps, mode)) if mode == "fwd" else None,
               compiled=None)
    if compiled:
        torch.compiler.reset()
        loop = torch.compile(eager_loop, mode="reduce-overhead")
        row["compiled"] = bench(runner(loop, cell, lin, eps, steps, mode))
    return row


def format_row(B, H, steps, mode, row):
    """time_shape's row as one line under print_header's columns."""
    t_eager, t_fused, t_graph, t_comp = row["eager"], row["fused"], row["graph"], row["compiled"]
    comp_s = f"{t_comp[0]:8.3f}" if t_comp else f"{'-':>8}"
    comp_x = f"{t_comp[0] / t_fused[0]:10.1f}" if t_comp else f"{'-':>10}"
    k_s = f"{row['kernel_us']:9.1f}" if row["kernel_us"] is not None else f"{'-':>9}"
    return (f"{B:5d} {H:4d} {steps:3d} {mode:8} | {t_eager[0]:8.3f} {comp_s} "
            f"{t_fused[0]:8.3f} [{t_fused[1]:.3f}-{t_fused[2]:.3f}] {t_graph[0]:8.3f} "
            f"{k_s} | {t_eager[0] / t_fused[0]:7.1f} {comp_x}")


def gpu_table(args):
    """The full table on the GPU: every (steps, H, B), forward and forward+backward."""
    dev = print_header()
    Bs, Hs, Ts = ([64, 1024], [16, 64], [20]) if args.quick else \
        ([16, 64, 256, 1024, 4096], [16, 32, 64], [20, 64])       # H <= MAX_H: the kernel's sizes
    for steps, H, B in itertools.product(Ts, Hs, Bs):
        cell, lin, eps = make_modules(B, H, H, "cuda")
        compiled = not args.no_compile and (args.compile_all or (B, H, steps) in COMPILE_AT)
        for mode in ("fwd", "fwd+bwd"):
            row = time_shape(cell, lin, eps, steps, mode, args.precision, compiled)
            print(format_row(B, H, steps, mode, row), flush=True)
    print(f"\nx eager / x compiled: speed-up of the fused call as users make it; precision "
          f"{args.precision}; {dev}")


def main(argv=None):
    args = parse_args(argv)
    if args.aot:
        return aot_table(args.arch, args.variant, args.precision)
    if not torch.cuda.is_available():
        return cpu_reference_table()
    if args.tune:
        return tune(args.precision)
    gpu_table(args)


if __name__ == "__main__":
    main()
