"""Benchmark of the fused GRU-with-feedback kernel against the loops people write instead.

Rows, for each (B, H, steps) and for the forward and forward+backward:
  eager     a Python loop of nn.GRUCell + nn.Linear (what MoCoGAN-style code does)
  compiled  the same loop under torch.compile(mode="reduce-overhead") (CUDA graphs); compiling
            every shape takes long, so by default only a few shapes (--compile-all for all)
  fused     kernels.gru_feedback(backend="triton"): one launch forward, one backward (+ GEMMs)
  empty     an empty Triton kernel launch: the floor of any one-launch implementation
Times are medians of triton.testing.do_bench (quantiles 0.2 and 0.8 shown), warm-up and
compilation excluded; speed-ups are eager / fused and compiled / fused.

Usage:
    python -m kernels.bench                  # the full table on a GPU; the reference on a CPU
    python -m kernels.bench --quick          # B in {64, 1024}, H in {16, 128}, steps 20
    python -m kernels.bench --compile-all    # compiled rows for every shape (slow to compile)
"""
import argparse
import platform
import time

import torch

from kernels.gru_feedback import gru_feedback


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


def fused(cell, lin, eps, steps):
    return gru_feedback(eps, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                        lin.weight, steps, backend="triton")


def main(argv=None):
    p = argparse.ArgumentParser(description="Benchmark the fused GRU-with-feedback kernel.")
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--compile-all", action="store_true", help="compiled rows for every shape")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print(f"no GPU: timing the PyTorch reference on the CPU ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads); the Triton kernel needs CUDA")
        for B, H, steps in [(64, 16, 20), (256, 64, 20), (1024, 128, 64)]:
            cell, lin, eps = make_modules(B, H, H, "cpu")
            for mode in ("fwd", "fwd+bwd"):
                t0, n = time.perf_counter(), 0
                while time.perf_counter() - t0 < 0.5:
                    z = gru_feedback(eps, cell.weight_ih, cell.weight_hh, cell.bias_ih,
                                     cell.bias_hh, lin.weight, steps, backend="torch")
                    if mode == "fwd+bwd":
                        z.sum().backward()
                    n += 1
                print(f"B={B:5d} H={H:4d} steps={steps:3d} {mode:8s} reference "
                      f"{(time.perf_counter() - t0) / n * 1e3:8.3f} ms")
        return

    import triton

    @triton.jit
    def _empty_kernel(p):
        pass

    dev = torch.cuda.get_device_name()
    print(f"GPU: {dev}; torch {torch.__version__}, triton {triton.__version__}")
    Bs, Hs, Ts = ([64, 1024], [16, 128], [20]) if args.quick else \
        ([16, 64, 256, 1024, 4096], [16, 64, 128], [20, 64])
    compile_at = {(64, 16, 20), (1024, 128, 20), (64, 128, 64), (4096, 64, 20)}
    dummy = torch.empty(1, device="cuda")
    q = [0.5, 0.2, 0.8]
    t_empty = triton.testing.do_bench(lambda: _empty_kernel[(1,)](dummy), quantiles=q)
    print(f"empty Triton launch: {t_empty[0] * 1e3:.1f} us (p20 {t_empty[1] * 1e3:.1f}, "
          f"p80 {t_empty[2] * 1e3:.1f})\n")
    hdr = (f"{'B':>5} {'H':>4} {'T':>3} {'mode':8} | {'eager ms':>9} {'compiled ms':>11} "
           f"{'fused ms':>9} [p20-p80]       | {'x eager':>8} {'x compiled':>10} {'x empty':>8}")
    print(hdr)
    print("-" * len(hdr))
    for steps in Ts:
        for H in Hs:
            for B in Bs:
                cell, lin, eps = make_modules(B, H, H, "cuda")
                want_compile = not args.no_compile and (args.compile_all or (B, H, steps) in compile_at)
                for mode in ("fwd", "fwd+bwd"):
                    def bench(fn):
                        if mode == "fwd":
                            def run():
                                with torch.no_grad():
                                    fn(cell, lin, eps, steps)
                        else:
                            def run():
                                fn(cell, lin, eps, steps).sum().backward()
                        return triton.testing.do_bench(run, quantiles=q)
                    t_eager = bench(eager_loop)
                    t_fused = bench(fused)
                    t_comp = None
                    if want_compile:
                        torch.compiler.reset()
                        comp = torch.compile(eager_loop, mode="reduce-overhead")
                        t_comp = bench(comp)
                    comp_s = f"{t_comp[0]:11.3f}" if t_comp else f"{'-':>11}"
                    comp_x = f"{t_comp[0] / t_fused[0]:10.1f}" if t_comp else f"{'-':>10}"
                    print(f"{B:5d} {H:4d} {steps:3d} {mode:8} | {t_eager[0]:9.3f} {comp_s} "
                          f"{t_fused[0]:9.3f} [{t_fused[1]:.3f}-{t_fused[2]:.3f}] | "
                          f"{t_eager[0] / t_fused[0]:8.1f} {comp_x} "
                          f"{t_fused[0] / t_empty[0]:8.1f}", flush=True)
    print(f"\nx eager / x compiled: speed-up of the fused kernel; x empty: fused time in units of "
          f"an empty launch ({dev})")


if __name__ == "__main__":
    main()
