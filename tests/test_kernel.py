"""Parity of the fused GRU-with-feedback kernel with the PyTorch reference and nn.GRUCell.

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py), and on a
GPU for real when one is present (the `cuda` tests are skipped without one).
    TRITON_INTERPRET=1 python -m pytest tests/test_kernel.py -q
"""
import os
import re
import warnings

import pytest
import torch

from conftest import run_copied_alone
from kernels import backend_for, gru_feedback, gru_feedback_ref
from kernels import fused_recurrent as fr

# the kernel runs compiled on a GPU, else on the CPU through the interpreter
DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
ARGS = ["eps", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_m"]


def make(B, H, E, device=DEVICE, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    cell = torch.nn.GRUCell(E, H)
    # seeded, about nn.GRUCell's init: with much larger weights the recurrence turns chaotic and
    # fp32 rounding alone (any two implementations) grows to 1e-3 over 20 steps
    std = scale / max(H, E) ** 0.5
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    tensors = [torch.randn(B, E, generator=g) * scale, cell.weight_ih.detach(),
               cell.weight_hh.detach(), cell.bias_ih.detach(), cell.bias_hh.detach(),
               torch.randn(E, H, generator=g) * std]
    return [t.to(device, dtype).clone().requires_grad_() for t in tensors]


def run(params, steps, backend, seed=1):
    z = gru_feedback(*params, steps=steps, backend=backend)
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z)  # same on any device
    grads = torch.autograd.grad((z * g).sum(), params, materialize_grads=True)
    return [z.detach()] + list(grads)


def grucell_loop(params, steps):
    """An nn.GRUCell loop with the feedback, as MoCoGAN-style code writes it."""
    eps, w_ih, w_hh, b_ih, b_hh, w_m = params
    cell = torch.nn.GRUCell(eps.shape[1], w_hh.shape[1])
    with torch.no_grad():
        for p, v in zip(cell.parameters(), (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(v)
    cell = cell.to(eps.device)
    h, e, out = eps.new_zeros(eps.shape[0], w_hh.shape[1]), eps, []
    for _ in range(steps):
        h = cell(e, h)
        out.append(h)
        e = h @ w_m.t()
    return torch.stack(out, 1)


def assert_close(a, b, name, rtol=1e-4, atol=1e-5):
    scale = b.abs().max().item() + 1e-6
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


SHAPES = [(1, 1, 1, 1), (3, 8, 5, 2), (37, 20, 16, 20), (64, 16, 16, 20), (3, 33, 12, 20),
          (37, 16, 20, 1), (1, 33, 8, 2), (64, 8, 3, 20), (3, 65, 8, 3), (19, 40, 37, 4)]
# (3, 65, 8, 3): H padded to 128, above MAX_H (a GPU runs the loop), here MAX_H's configuration;
# (19, 40, 37, 4): E and H each over chunks of 16 (step 1, the epilogue) with a partial last one


@pytest.mark.parametrize("B,H,E,steps", SHAPES, ids=[f"B{b}-H{h}-E{e}-T{t}" for b, h, e, t in SHAPES])
def test_triton_matches_reference_and_grads(B, H, E, steps):
    params = make(B, H, E)
    ref = run(params, steps, "torch")
    tri = run(params, steps, "triton")
    for name, a, b in zip(["z"] + ["d" + n for n in ARGS], tri, ref):
        assert a.shape == b.shape, name
        assert_close(a, b, name)


# every code path the tables can choose: weights in registers or not (HOIST), the backward's
# gate sums in one program or split over 2 or 4 (SPLIT); a few rows per program, so several
PATHS = [(hoist, split) for hoist in (True, False) for split in (1, 2, 4)]


@pytest.mark.parametrize("hoist,split", PATHS, ids=[f"hoist{h}-split{s}" for h, s in PATHS])
def test_every_code_path_matches_reference(monkeypatch, hoist, split):
    monkeypatch.setitem(fr.FWD_TUNING, 32, (8, 4, hoist))
    monkeypatch.setitem(fr.BWD_TUNING, 32, (8, 4, hoist, split))
    params = make(19, 20, 21)
    ref = run(params, 5, "torch")
    tri = run(params, 5, "triton")
    for name, a, b in zip(["z"] + ["d" + n for n in ARGS], tri, ref):
        assert_close(a, b, name)


def test_launch_tables_cover_every_size_up_to_max_h():
    """One entry per padded H up to MAX_H, shaped as _launch_config reads it; E chooses none."""
    assert sorted(fr.FWD_TUNING) == sorted(fr.BWD_TUNING) == [16, 32, 64] == [
        h for h in (16, 32, 64, 128) if h <= fr.MAX_H]
    for H in (1, 15, 16, 17, 40, 64):
        for precision in ("ieee", "tf32"):
            fwd = fr._launch_config(H, 3, backward=False, precision=precision)
            bwd = fr._launch_config(H, 300, backward=True, precision=precision)
            assert fwd["BH"] == bwd["BH"] == max(16, 1 << (H - 1).bit_length())
            assert bwd["SPLIT"] in (1, 2, 4) and "SPLIT" not in fwd
            assert fr._launch_config(H, 16, True, precision) == bwd   # whatever E
    assert set(fr.BWD_TUNING_TF32) <= set(fr.BWD_TUNING) and set(fr.FWD_TUNING_TF32) <= set(fr.FWD_TUNING)


def test_above_max_h_cuda_runs_the_loop_and_says_so_once(monkeypatch):
    """backend="triton" with CUDA tensors of H > MAX_H runs the reference, with one warning a
    process that names the size and the limit; auto gives the same reason."""
    monkeypatch.setattr(fr, "_said_too_big", False)
    big = fr.MAX_H + 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fr._warn_too_big(big)
        fr._warn_too_big(big + 7)
    messages = [str(w.message) for w in seen]
    assert len(messages) == 1 and f"H = {big} > MAX_H = {fr.MAX_H}" in messages[0], messages
    assert "PyTorch reference loop" in messages[0] and "kernels.bench --aot" in messages[0]
    backend, reason = backend_for("cuda", big)
    assert backend == "torch" and f"MAX_H = {fr.MAX_H}" in reason, reason


def test_aot_says_why_it_cannot_run(monkeypatch):
    """--aot needs the kernels compiled, not interpreted, and triton's NVIDIA toolchain; without
    them it stops with the reason."""
    from kernels import bench
    monkeypatch.setattr(fr, "INTERPRET", True)
    assert "TRITON_INTERPRET=1" in bench.aot_unavailable()
    with pytest.raises(SystemExit, match="env -u TRITON_INTERPRET"):
        bench.main(["--aot"])
    monkeypatch.setattr(fr, "triton", None)
    assert bench.aot_toolchain_missing() == "triton is not installed"


@pytest.mark.parametrize("B,H,E,steps", [(37, 20, 16, 20), (1, 1, 3, 2)], ids=["B37-H20", "B1-H1"])
def test_reference_equals_grucell_loop(B, H, E, steps):
    params = make(B, H, E)
    with torch.no_grad():
        z = gru_feedback(*params, steps=steps, backend="torch")
        assert_close(z, grucell_loop(params, steps), "z vs nn.GRUCell loop", rtol=1e-5)


def test_reference_gradcheck_float64():
    params = [p.detach().double().requires_grad_() for p in make(3, 5, 4)]
    assert torch.autograd.gradcheck(lambda *a: gru_feedback_ref(*a, 4), params)


def test_weight_grads_deterministic():
    params = make(64, 16, 16, seed=3)
    a, b = run(params, 20, "triton"), run(params, 20, "triton")
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_large_inputs_stay_finite():
    # pre-activations around 1e4: sigmoid/tanh must not overflow into NaN/inf
    params = make(5, 16, 16, scale=1000.0)
    tri = run(params, 3, "triton")
    ref = run(params, 3, "torch")
    with torch.no_grad():
        pre = params[0] @ params[1].t()
    assert pre.abs().max() > 1e3
    for name, t in zip(["z"] + ARGS, tri):
        assert torch.isfinite(t).all(), name
    assert_close(tri[0], ref[0], "z", rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_inputs_computed_in_fp32(dtype):
    params = make(7, 16, 16, dtype=dtype)
    z = gru_feedback(*params, steps=5, backend="triton")
    assert z.dtype == dtype
    ref = gru_feedback_ref(*[p.detach().float() for p in params], 5)
    torch.testing.assert_close(z.float(), ref, rtol=2e-2, atol=2e-2)
    z.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in params)


def test_input_errors():
    p = make(4, 8, 8)
    with pytest.raises(ValueError, match="steps"):
        gru_feedback(*p, steps=0)
    with pytest.raises(ValueError, match="weight_m"):
        gru_feedback(*p[:5], torch.zeros(3, 8), steps=2)
    with pytest.raises(ValueError, match="eps"):
        gru_feedback(p[0][0], *p[1:], steps=2)
    with pytest.raises(TypeError, match="dtype"):
        gru_feedback(p[0].double(), *p[1:], steps=2)
    with pytest.raises(ValueError, match="backend"):
        gru_feedback(*p, steps=2, backend="cuda")
    with pytest.raises(ValueError, match="precision"):
        gru_feedback(*p, steps=2, backend="triton", precision="bf16")


def test_tf32_precision_is_close():
    """precision="tf32" is an opt-in speed-up: on a GPU ~1e-3 off the exact result."""
    params = make(37, 16, 16)
    z = gru_feedback(*params, steps=20, backend="triton", precision="tf32")
    torch.testing.assert_close(z, gru_feedback_ref(*params, 20), rtol=1e-2, atol=1e-2)


def host_ops(fn):
    """The ATen ops fn dispatches from the host, with every Triton launch stubbed out:
    (names of the outermost aten:: ops, number of launches). Autograd's accumulation into
    .grad is not the kernel's work, and torch.autograd.grad does none."""
    launches = []

    class Stub:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(grid)

    real, fr.wrap_triton = fr.wrap_triton, lambda kernel: Stub()
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        fr.wrap_triton = real
    ops = [e.name for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return ops, len(launches)


def test_host_ops_per_call():
    """The forward issues 1 launch and 2 ATen ops (its output, W_ih @ W_m); the backward 1 launch
    and 8 ATen ops (two outputs, W_ih @ W_m, the sum of the per-program partials, one split and
    three views). Each is a host dispatch of ~10-50 us on a GPU machine, so each is counted."""
    params = make(64, 16, 16)
    out = {}
    fwd_ops, fwd_launches = host_ops(lambda: out.update(z=gru_feedback(*params, steps=20, backend="triton")))
    dz = torch.ones_like(out["z"])
    bwd_ops, bwd_launches = host_ops(lambda: torch.autograd.grad(out["z"], params, dz))
    assert (fwd_launches, len(fwd_ops)) == (1, 2), fwd_ops
    assert (bwd_launches, len(bwd_ops)) == (1, 8), bwd_ops


def test_auto_backend_on_cpu_is_reference_and_silent(monkeypatch):
    monkeypatch.setattr(fr, "_said_fallback", False)
    p = make(4, 8, 8, device="cpu")
    with warnings.catch_warnings(record=True) as seen:   # whatever filters pytest.ini sets
        warnings.simplefilter("always")
        z = gru_feedback(*p, steps=3)
    assert [str(w.message) for w in seen] == []           # the expected path on a CPU: no warning
    assert torch.equal(z, gru_feedback_ref(*p, 3))


def test_auto_fallback_on_cuda_warns_once(monkeypatch):
    """Where CUDA tensors miss the kernel (H above AUTO_MAX_H here) auto warns, once a process;
    the choice is made from the device alone, so no GPU is needed."""
    monkeypatch.setattr(fr, "_said_fallback", False)
    big = fr.AUTO_MAX_H + 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        chosen = [fr._auto_backend("cuda", big), fr._auto_backend("cuda", big), fr._auto_backend("cpu", 8)]
    assert chosen == ["torch", "torch", "torch"]
    messages = [str(w.message) for w in seen]
    assert len(messages) == 1 and f"H = {big} > AUTO_MAX_H" in messages[0], messages


def test_backend_for_names_choice_and_reason(monkeypatch):
    assert backend_for("cpu", 16) == ("torch", "PyTorch loop: CPU tensors")
    assert backend_for(torch.device("cpu"), 256)[0] == "torch"
    backend, reason = backend_for("cuda", fr.AUTO_MAX_H)
    assert backend == "triton" and reason.startswith("fused Triton kernel"), reason
    backend, reason = backend_for("cuda:0", fr.AUTO_MAX_H + 1)
    assert backend == "torch" and "AUTO_MAX_H" in reason, reason
    monkeypatch.setattr(fr, "triton", None)
    assert backend_for("cuda", 16) == ("torch", "PyTorch loop: triton is not installed (pip install triton)")


def test_torch_without_triton_op_says_which_version(monkeypatch):
    """Where torch lacks triton_op (before 2.6), auto names the version and the minimum, and
    backend="triton" raises with them; the reference still runs."""
    monkeypatch.setattr(fr, "TORCH_HAS_OPS", False)
    backend, reason = backend_for("cuda", 16)
    assert backend == "torch" and torch.__version__ in reason and fr.MIN_TORCH in reason, reason
    p = make(3, 8, 5, device="cpu")
    with pytest.raises(RuntimeError, match=re.escape(f"torch {torch.__version__} lacks")):
        gru_feedback(*p, steps=2, backend="triton")
    assert torch.equal(gru_feedback(*p, steps=2, backend="torch"), gru_feedback_ref(*p, 2))


def run_alone(tmp_path, script):
    """Runs `script` with kernels/fused_recurrent.py copied alone into tmp_path, the interpreter
    on: the repository cannot be imported from there."""
    r = run_copied_alone(fr.__file__, tmp_path, script, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


ALONE_PARITY = """
import importlib.util, torch
assert importlib.util.find_spec("kernels") is None   # only the copied file is importable
import fused_recurrent as fr
g = torch.Generator().manual_seed(0)
cell = torch.nn.GRUCell(5, 7)
args = [torch.randn(3, 5, generator=g), *(p.detach() for p in cell.parameters()),
        torch.randn(5, 7, generator=g) * 0.3]
ref = fr.gru_feedback(*args, steps=4, backend="torch")
tri = fr.gru_feedback(*args, steps=4, backend="triton")
torch.testing.assert_close(tri, ref, rtol=1e-4, atol=1e-5)
print("ALONE OK", tuple(tri.shape))
"""


def test_file_copied_alone_runs_both_backends(tmp_path):
    """The copy promise: fused_recurrent.py imports nothing of this repository."""
    assert "ALONE OK (3, 4, 7)" in run_alone(tmp_path, ALONE_PARITY)


ALONE_OLD_TORCH = """
import torch, torch.library
del torch.library.triton_op, torch.library.wrap_triton   # as in PyTorch before 2.6
import fused_recurrent as fr
args = [torch.randn(2, 3), torch.randn(12, 3), torch.randn(12, 4), torch.randn(12), torch.randn(12),
        torch.randn(3, 4)]
print("REF", tuple(fr.gru_feedback(*args, steps=2).shape))
try:
    fr.gru_feedback(*args, steps=2, backend="triton")
except RuntimeError as e:
    print("RAISED", e)
"""


def test_old_torch_imports_and_says_what_to_do(tmp_path):
    out = run_alone(tmp_path, ALONE_OLD_TORCH)
    assert "REF (2, 2, 4)" in out
    assert f"RAISED gru_feedback: backend='triton' cannot run: torch {torch.__version__} lacks" in out
    assert "PyTorch >= 2.6" in out


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("B,H,E,steps", [(37, 20, 16, 20), (1024, 64, 64, 64), (5, 64, 16, 3),
                                         (4096, 64, 64, 20), (7, 50, 33, 5), (300, 32, 100, 20)])
def test_cuda_compiled_kernel(B, H, E, steps):
    params = make(B, H, E, device="cuda")  # large shapes too: the interpreter would be slow
    ref = run([p.detach().double().requires_grad_() for p in params], steps, "torch")
    tri = run(params, steps, "triton")
    for name, a, b in zip(["z"] + ["d" + n for n in ARGS], tri, ref):
        assert_close(a.double(), b, name, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
def test_cuda_above_max_h_runs_the_loop(monkeypatch):
    monkeypatch.setattr(fr, "_said_too_big", False)
    params = make(6, fr.MAX_H + 1, 16, device="cuda")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        z = gru_feedback(*params, steps=4, backend="triton")
    assert [f"MAX_H = {fr.MAX_H}" in str(w.message) for w in seen] == [True]
    assert torch.equal(z, gru_feedback_ref(*params, 4))


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
def test_cuda_graph_and_inductor_capture_the_kernels():
    """triton_op: a CUDA graph replays forward and backward, and inductor compiles with
    fullgraph=True; both give the eager result. A new batch size does not recompile (B and T
    are not specialised on)."""
    params = make(64, 16, 16, device="cuda")
    g = torch.randn(64, 20, 16, device="cuda")

    def step(p):
        z = gru_feedback(*p, steps=20, backend="triton")
        return [z.detach()] + list(torch.autograd.grad((z * g).sum(), p))

    eager = step(params)
    static = [p.detach().clone().requires_grad_() for p in params]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(static)                                        # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(static)
    graph.replay()
    torch.cuda.synchronize()
    for name, a, b in zip(["z"] + ARGS, captured, eager):
        assert_close(a, b, name)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *p: gru_feedback(*p, steps=20, backend="triton"), fullgraph=True)
    assert_close(compiled(*params), eager[0], "z compiled")
    variants = lambda: len(fr._fwd_kernel.device_caches[torch.cuda.current_device()][0])
    run(make(40, 16, 16, device="cuda"), 7, "triton")
    before = variants()
    run(make(41, 16, 16, device="cuda"), 9, "triton")
    assert variants() == before


def test_torch_compile_fullgraph_matches_eager():
    """The kernels are torch.library custom ops with an autograd formula: torch.compile with
    fullgraph=True (which raises on any graph break) traces through, forward and backward, and
    gives what eager gives. aot_eager: the tracing without code generation, to stay fast on CPU."""
    torch._dynamo.reset()
    params = make(B=5, H=8, E=6)
    eager = run(params, 3, "triton")
    graphs = []

    def backend(gm, example_inputs):             # record what dynamo captured, then aot_eager
        graphs.append(str(gm.graph))
        return torch._dynamo.backends.registry.lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(lambda *p: gru_feedback(*p, steps=3, backend="triton"),
                             fullgraph=True, backend=backend)
    z = compiled(*params)
    assert len(graphs) == 1 and "gru_feedback_fwd" in graphs[0]
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z)
    grads = torch.autograd.grad((z * g).sum(), params)
    for name, a, b in zip(["z"] + ARGS, [z.detach(), *grads], eager):
        assert torch.equal(a, b), name
