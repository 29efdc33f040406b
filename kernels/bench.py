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

Usage:
    python -m kernels.bench                  # the full table on a GPU; the reference on a CPU
    python -m kernels.bench --quick          # B in {64, 1024}, H in {16, 128}, steps 20
    python -m kernels.bench --compile-all    # compiled rows for every shape (slow to compile)
    python -m kernels.bench --precision tf32 # the kernels' opt-in TF32 products
    python -m kernels.bench --tune           # measure BLOCK_B, num_warps, hoisting per H: prints
                                             # the FWD_TUNING / BWD_TUNING tables to paste
"""
import argparse
import itertools
import platform
import time

import torch

from kernels import fused_recurrent as fr
from kernels.fused_recurrent import gru_feedback

QUANTILES = [0.5, 0.2, 0.8]   # median first: do_bench returns them in this order
# the shapes whose compiled rows are timed by default (each compile takes long)
COMPILE_AT = {(64, 16, 20), (1024, 128, 20), (64, 128, 64), (4096, 64, 20)}


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
    """For each padded H, the (BLOCK_B, num_warps, hoist) of the forward and of the backward with
    the least summed median time over Bs; prints the tables. Configurations that fail to compile
    (registers, shared memory) are skipped."""
    import triton
    fuse = lambda c, l, e, s: fused(c, l, e, s, precision)
    tables = {"FWD_TUNING": dict(fr.FWD_TUNING), "BWD_TUNING": dict(fr.BWD_TUNING)}
    for H in (16, 32, 64, 128):
        for name in tables:
            best = None
            for cand in itertools.product((16, 32, 64), (1, 2, 4, 8), (True, False)):
                getattr(fr, name)[H] = cand
                total = 0.0
                try:
                    for B in Bs:
                        cell, lin, eps = make_modules(B, H, H, "cuda")
                        mode = "fwd" if name == "FWD_TUNING" else "fwd+bwd"
                        run = runner(fuse, cell, lin, eps, steps, mode)
                        total += triton.testing.do_bench(run)
                except Exception as e:  # noqa: BLE001 -- a configuration that does not compile
                    print(f"H={H} {name} {cand}: skipped ({type(e).__name__})")
                    continue
                print(f"H={H} {name} BLOCK_B={cand[0]} num_warps={cand[1]} hoist={cand[2]}: "
                      f"{total:.3f} ms over B in {Bs}", flush=True)
                if best is None or total < best[0]:
                    best = (total, cand)
            tables[name][H] = best[1]
            getattr(fr, name)[H] = best[1]      # the backward is tuned with the best forward
    print(f"\n# measured on {torch.cuda.get_device_name()}, steps {steps}, precision {precision}")
    for name, table in tables.items():
        print(f"{name} = {table}")


def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark the fused GRU-with-feedback kernel.")
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--compile-all", action="store_true", help="compiled rows for every shape")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--precision", choices=["ieee", "tf32"], default="ieee",
                   help="the fused kernels' matrix products (default: exact fp32)")
    p.add_argument("--tune", action="store_true", help="measure the launch tables instead")
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
    Bs, Hs, Ts = ([64, 1024], [16, 128], [20]) if args.quick else \
        ([16, 64, 256, 1024, 4096], [16, 64, 128], [20, 64])
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
    if not torch.cuda.is_available():
        return cpu_reference_table()
    if args.tune:
        return tune(args.precision)
    gpu_table(args)


if __name__ == "__main__":
    main()
