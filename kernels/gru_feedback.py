"""Fused GRU with linear feedback: the MDBiGAN motion sampler (paper eqs. 12-14) as Triton kernels.

    h(0) = 0,  e(1) = eps,  h(t) = GRUCell(e(t), h(t-1)),  z(t) = h(t),  e(t+1) = W_m h(t)

Eager PyTorch runs this as a Python loop of ~10 small kernels per step, and cuDNN's GRU cannot
express the feedback. Here the whole recurrence is one launch forward and one backward: each
program owns BLOCK_B rows of the batch and walks all steps with its state in registers and, when
they fit (HOIST), the weights too. State and accumulation are fp32; tl.dot runs in IEEE fp32.

Backward: the kernel walks the steps in reverse, recomputing the gates from the saved outputs z,
and writes the gate pre-activation gradients [B, T, 4H]. The weight gradients are then plain
matrix products over (B, T) -- deterministic (no atomics) and as fast as cuBLAS gets.

Layers, as in fla-org/flash-linear-attention: `gru_feedback_ref` (the readable PyTorch spec),
`_fwd_kernel`/`_bwd_kernel` -> host functions -> custom operators `mdbigan::gru_feedback_fwd/_bwd`
(torch.library, with an autograd formula: no graph break under torch.compile) -> `gru_feedback`.

Usage:
    from kernels import gru_feedback
    z = gru_feedback(eps, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                     linear.weight, steps=20)            # [B, 20, H], Triton on CUDA
    TRITON_INTERPRET=1 python -m pytest tests/test_kernel.py   # the kernel on the CPU
    python -m kernels.bench                                    # speed against the baselines
"""
import os
import warnings

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference backend still works
    triton = None


def gru_feedback_ref(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps):
    """Plain PyTorch reference: the readable spec of the recurrence. Shapes as gru_feedback."""
    h = eps.new_zeros(eps.shape[0], weight_hh.shape[1])          # (B, H)
    e, zs = eps, []
    for _ in range(steps):
        gi = e @ weight_ih.t() + bias_ih                          # (B, 3H): r, z, n of the input
        gh = h @ weight_hh.t() + bias_hh                          # (B, 3H): r, z, n of the state
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)                             # reset applied after the matmul
        h = (1 - z) * n + z * h
        zs.append(h)
        e = h @ weight_m.t()                                      # (B, E): the linear feedback
    return torch.stack(zs, 1)                                     # (B, T, H)


if triton is not None:

    @triton.jit
    def _sigmoid(x):
        # exp of a non-positive number only: no overflow for any x
        e = tl.exp(-tl.abs(x))
        return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    @triton.jit
    def _tanh(x):
        e = tl.exp(-2.0 * tl.abs(x))
        y = (1.0 - e) / (1.0 + e)
        return tl.where(x >= 0, y, -y)

    @triton.jit
    def _load_mat(p, ROWS, COLS, stride, n_rows, n_cols, TRANS: tl.constexpr):
        """Loads a [n_rows, n_cols] row-major matrix into a padded block (transposed if TRANS)."""
        if TRANS:
            i_c, i_r = tl.arange(0, COLS)[:, None], tl.arange(0, ROWS)[None, :]
        else:
            i_r, i_c = tl.arange(0, ROWS)[:, None], tl.arange(0, COLS)[None, :]
        return tl.load(p + i_r * stride + i_c, mask=(i_r < n_rows) & (i_c < n_cols), other=0.0)

    @triton.jit
    def _mm(b_x, w, p_w, ROWS: tl.constexpr, COLS: tl.constexpr, stride, n_rows, n_cols,
            TRANS: tl.constexpr, HOIST: tl.constexpr):
        """b_x @ w. With HOIST, w is the block already in registers; else it is loaded here, right
        before its one use, so that only one weight block at a time needs shared memory."""
        if not HOIST:
            w = _load_mat(p_w, ROWS, COLS, stride, n_rows, n_cols, TRANS)
        return tl.dot(b_x, w, input_precision="ieee")

    @triton.jit
    def _biases(p_bih, p_bhh, i_h, H):
        """b_ir + b_hr, b_iz + b_hz, b_in, b_hn as [1, BH] rows (b_hn stays apart: reset gate)."""
        m = i_h < H
        b_ir = tl.load(p_bih + i_h, mask=m, other=0.0) + tl.load(p_bhh + i_h, mask=m, other=0.0)
        b_iz = tl.load(p_bih + H + i_h, mask=m, other=0.0) + tl.load(p_bhh + H + i_h, mask=m, other=0.0)
        b_in = tl.load(p_bih + 2 * H + i_h, mask=m, other=0.0)
        b_hn = tl.load(p_bhh + 2 * H + i_h, mask=m, other=0.0)
        return b_ir, b_iz, b_in, b_hn

    @triton.jit
    def _gates(b_e, b_h, w_ir, w_iz, w_in, w_hr, w_hz, w_hn, b_ir, b_iz, b_in, b_hn, p_wih, p_whh,
               H, E, BH: tl.constexpr, BE: tl.constexpr, HOIST: tl.constexpr):
        """One GRUCell step from e(t) and h(t-1): gates r, z (called u), n, and W_hn h + b_hn."""
        r = _sigmoid(_mm(b_e, w_ir, p_wih, BH, BE, E, H, E, True, HOIST)
                     + _mm(b_h, w_hr, p_whh, BH, BH, H, H, H, True, HOIST) + b_ir)
        u = _sigmoid(_mm(b_e, w_iz, p_wih + H * E, BH, BE, E, H, E, True, HOIST)
                     + _mm(b_h, w_hz, p_whh + H * H, BH, BH, H, H, H, True, HOIST) + b_iz)
        g_hn = _mm(b_h, w_hn, p_whh + 2 * H * H, BH, BH, H, H, H, True, HOIST) + b_hn
        n = _tanh(_mm(b_e, w_in, p_wih + 2 * H * E, BH, BE, E, H, E, True, HOIST) + b_in + r * g_hn)
        return r, u, n, g_hn

    @triton.jit
    def _weights(p_wih, p_whh, p_wm, H, E, BH: tl.constexpr, BE: tl.constexpr):
        """The nine weight blocks, transposed for `x @ w`: [BE, BH] x3, [BH, BH] x3, [BH, BE]."""
        w_ir = _load_mat(p_wih, BH, BE, E, H, E, True)
        w_iz = _load_mat(p_wih + H * E, BH, BE, E, H, E, True)
        w_in = _load_mat(p_wih + 2 * H * E, BH, BE, E, H, E, True)
        w_hr = _load_mat(p_whh, BH, BH, H, H, H, True)
        w_hz = _load_mat(p_whh + H * H, BH, BH, H, H, H, True)
        w_hn = _load_mat(p_whh + 2 * H * H, BH, BH, H, H, H, True)
        w_m = _load_mat(p_wm, BE, BH, H, E, H, True)
        return w_ir, w_iz, w_in, w_hr, w_hz, w_hn, w_m

    @triton.jit
    def _fwd_kernel(
        p_eps,   # [B, E] fp32: e(1)
        p_wih,   # [3H, E] fp32: GRUCell.weight_ih (r, z, n)
        p_whh,   # [3H, H] fp32: GRUCell.weight_hh
        p_bih,   # [3H] fp32
        p_bhh,   # [3H] fp32
        p_wm,    # [E, H] fp32: feedback weight
        p_z,     # [B, T, H] fp32 out: h(1..T)
        B, T, H, E,
        BLOCK_B: tl.constexpr, BH: tl.constexpr, BE: tl.constexpr, HOIST: tl.constexpr,
    ):
        i_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]   # (BLOCK_B, 1)
        i_h = tl.arange(0, BH)[None, :]
        i_e = tl.arange(0, BE)[None, :]
        m_h = (i_b < B) & (i_h < H)
        b_e = tl.load(p_eps + i_b * E + i_e, mask=(i_b < B) & (i_e < E), other=0.0)
        b_h = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        b_ir, b_iz, b_in, b_hn = _biases(p_bih, p_bhh, i_h, H)
        if HOIST:  # weights stay in registers for all steps
            w_ir, w_iz, w_in, w_hr, w_hz, w_hn, w_m = _weights(p_wih, p_whh, p_wm, H, E, BH, BE)
        else:      # too big for registers: each block is reloaded (L1/L2-resident) at its use
            w_ir, w_iz, w_in, w_hr, w_hz, w_hn, w_m = 0, 0, 0, 0, 0, 0, 0
        for t in range(T):
            r, u, n, g_hn = _gates(b_e, b_h, w_ir, w_iz, w_in, w_hr, w_hz, w_hn, b_ir, b_iz, b_in,
                                   b_hn, p_wih, p_whh, H, E, BH, BE, HOIST)
            b_h = (1.0 - u) * n + u * b_h
            b_h = tl.where(i_h < H, b_h, 0.0)       # keep the padding exactly zero
            tl.store(p_z + i_b * T * H + t * H + i_h, b_h.to(p_z.dtype.element_ty), mask=m_h)
            b_e = _mm(b_h, w_m, p_wm, BE, BH, H, E, H, True, HOIST)

    @triton.jit
    def _bwd_kernel(
        p_eps, p_wih, p_whh, p_bih, p_bhh, p_wm,   # as in _fwd_kernel
        p_z,     # [B, T, H] fp32: forward outputs h(1..T)
        p_dz,    # [B, T, H] fp32: gradient of the loss w.r.t. z
        p_dg,    # [B, T, 4H] fp32 out: d pre-activations (r, z, n of the input, n of the state)
        p_deps,  # [B, E] fp32 out: gradient w.r.t. eps
        B, T, H, E,
        BLOCK_B: tl.constexpr, BH: tl.constexpr, BE: tl.constexpr, HOIST: tl.constexpr,
    ):
        i_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
        i_h = tl.arange(0, BH)[None, :]
        i_e = tl.arange(0, BE)[None, :]
        m_h = (i_b < B) & (i_h < H)
        m_e = (i_b < B) & (i_e < E)
        b_ir, b_iz, b_in, b_hn = _biases(p_bih, p_bhh, i_h, H)
        b_dh = tl.zeros([BLOCK_B, BH], dtype=tl.float32)   # gradient flowing into h(t) from t+1
        b_de = tl.zeros([BLOCK_B, BE], dtype=tl.float32)
        if HOIST:
            w_ir, w_iz, w_in, w_hr, w_hz, w_hn, w_m = _weights(p_wih, p_whh, p_wm, H, E, BH, BE)
            t_ir, t_iz, t_in = tl.trans(w_ir), tl.trans(w_iz), tl.trans(w_in)
            t_hr, t_hz, t_hn, t_m = tl.trans(w_hr), tl.trans(w_hz), tl.trans(w_hn), tl.trans(w_m)
        else:
            w_ir, w_iz, w_in, w_hr, w_hz, w_hn, w_m = 0, 0, 0, 0, 0, 0, 0
            t_ir, t_iz, t_in, t_hr, t_hz, t_hn, t_m = 0, 0, 0, 0, 0, 0, 0
        for k in range(T):
            t = T - 1 - k
            # recompute step t from h(t-1) (zero at t = 0) and e(t) (eps, or W_m h(t-1))
            b_hp = tl.load(p_z + i_b * T * H + (t - 1) * H + i_h, mask=m_h & (i_b * 0 + t > 0), other=0.0)
            if t > 0:
                b_e = _mm(b_hp, w_m, p_wm, BE, BH, H, E, H, True, HOIST)
            else:
                b_e = tl.load(p_eps + i_b * E + i_e, mask=m_e, other=0.0)
            r, u, n, g_hn = _gates(b_e, b_hp, w_ir, w_iz, w_in, w_hr, w_hz, w_hn, b_ir, b_iz, b_in,
                                   b_hn, p_wih, p_whh, H, E, BH, BE, HOIST)
            # total gradient into h(t): from z(t), from h(t+1), and via e(t+1) = W_m h(t)
            b_dh += tl.load(p_dz + i_b * T * H + t * H + i_h, mask=m_h, other=0.0)
            b_dh += _mm(b_de, t_m, p_wm, BE, BH, H, E, H, False, HOIST)
            d_n = b_dh * (1.0 - u) * (1.0 - n * n)
            d_u = b_dh * (b_hp - n) * u * (1.0 - u)
            d_hn = d_n * r
            d_r = d_n * g_hn * r * (1.0 - r)
            d_r = tl.where(m_h, d_r, 0.0)
            d_u = tl.where(m_h, d_u, 0.0)
            d_n = tl.where(m_h, d_n, 0.0)
            d_hn = tl.where(m_h, d_hn, 0.0)
            p_g = p_dg + i_b * T * 4 * H + t * 4 * H + i_h
            tl.store(p_g, d_r, mask=m_h)
            tl.store(p_g + H, d_u, mask=m_h)
            tl.store(p_g + 2 * H, d_n, mask=m_h)
            tl.store(p_g + 3 * H, d_hn, mask=m_h)
            # into e(t) and h(t-1)
            b_de = (_mm(d_r, t_ir, p_wih, BH, BE, E, H, E, False, HOIST)
                    + _mm(d_u, t_iz, p_wih + H * E, BH, BE, E, H, E, False, HOIST)
                    + _mm(d_n, t_in, p_wih + 2 * H * E, BH, BE, E, H, E, False, HOIST))
            b_dh = (b_dh * u + _mm(d_r, t_hr, p_whh, BH, BH, H, H, H, False, HOIST)
                    + _mm(d_u, t_hz, p_whh + H * H, BH, BH, H, H, H, False, HOIST)
                    + _mm(d_hn, t_hn, p_whh + 2 * H * H, BH, BH, H, H, H, False, HOIST))
        tl.store(p_deps + i_b * E + i_e, b_de, mask=m_e)


def _launch_config(B, H, E):
    BH = max(16, triton.next_power_of_2(H))
    BE = max(16, triton.next_power_of_2(E))
    BLOCK_B = 16 if BH >= 64 or B <= 16 * 132 else 32
    hoist = (3 * BE + 3 * BH + BE) * BH <= 16384     # the nine weight blocks in registers
    # no software pipelining of the in-loop weight loads: it would multiply their shared memory
    return BLOCK_B, BH, BE, hoist, dict(num_warps=4 if BH <= 64 else 8, num_stages=1)


def _fwd(eps, w_ih, w_hh, b_ih, b_hh, w_m, steps):
    B, E = eps.shape
    H = w_hh.shape[1]
    z = torch.empty(B, steps, H, device=eps.device, dtype=torch.float32)
    BLOCK_B, BH, BE, hoist, kw = _launch_config(B, H, E)
    _fwd_kernel[(triton.cdiv(B, BLOCK_B),)](eps, w_ih, w_hh, b_ih, b_hh, w_m, z, B, steps, H, E,
                                            BLOCK_B=BLOCK_B, BH=BH, BE=BE, HOIST=hoist, **kw)
    return z


def _bwd(eps, w_ih, w_hh, b_ih, b_hh, w_m, z, dz):
    B, T, H = z.shape
    E = eps.shape[1]
    dg = torch.empty(B, T, 4 * H, device=z.device, dtype=torch.float32)
    deps = torch.empty(B, E, device=z.device, dtype=torch.float32)
    BLOCK_B, BH, BE, hoist, kw = _launch_config(B, H, E)
    _bwd_kernel[(triton.cdiv(B, BLOCK_B),)](eps, w_ih, w_hh, b_ih, b_hh, w_m, z, dz, dg, deps,
                                            B, T, H, E, BLOCK_B=BLOCK_B, BH=BH, BE=BE,
                                            HOIST=hoist, **kw)
    # weight gradients: contractions over (B, T), deterministic matrix products
    h_prev = torch.cat([z.new_zeros(B, 1, H), z[:, :-1]], 1).reshape(B * T, H)   # (BT, H)
    e_in = torch.cat([eps[:, None], z[:, :-1] @ w_m.t()], 1).reshape(B * T, E)  # (BT, E)
    dg = dg.reshape(B * T, 4 * H)
    d_gi, d_gh = dg[:, :3 * H], torch.cat([dg[:, :2 * H], dg[:, 3 * H:]], 1)     # (BT, 3H)
    d_wih = d_gi.t() @ e_in
    d_whh = d_gh.t() @ h_prev
    de = (d_gi @ w_ih).reshape(B, T, E)[:, 1:].reshape(-1, E)                     # into e(2..T)
    d_wm = de.t() @ z[:, :-1].reshape(-1, H)
    return deps, d_wih, d_whh, d_gi.sum(0), d_gh.sum(0), d_wm


# Registered as custom operators with their own autograd formula, so that torch.compile
# (fullgraph=True included) keeps the fused kernels as single opaque nodes instead of breaking the
# graph at an autograd.Function it cannot trace through.
@torch.library.custom_op("mdbigan::gru_feedback_fwd", mutates_args=())
def _fwd_op(eps: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
            b_hh: torch.Tensor, w_m: torch.Tensor, steps: int) -> torch.Tensor:
    """Forward kernel; inputs fp32 and contiguous, output fp32 [B, steps, H]."""
    return _fwd(eps, w_ih, w_hh, b_ih, b_hh, w_m, steps)


@_fwd_op.register_fake
def _(eps, w_ih, w_hh, b_ih, b_hh, w_m, steps):
    return eps.new_empty(eps.shape[0], steps, w_hh.shape[1])


@torch.library.custom_op("mdbigan::gru_feedback_bwd", mutates_args=())
def _bwd_op(eps: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
            b_hh: torch.Tensor, w_m: torch.Tensor, z: torch.Tensor,
            dz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                       torch.Tensor, torch.Tensor]:
    """Backward kernel and weight-gradient products: the gradients of the six inputs."""
    return _bwd(eps, w_ih, w_hh, b_ih, b_hh, w_m, z, dz)


@_bwd_op.register_fake
def _(eps, w_ih, w_hh, b_ih, b_hh, w_m, z, dz):
    return tuple(torch.empty_like(t) for t in (eps, w_ih, w_hh, b_ih, b_hh, w_m))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6], output)


def _backward(ctx, dz):
    return (*_bwd_op(*ctx.saved_tensors, dz.float().contiguous()), None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


_said_fallback = False
AUTO_MAX_H = 32   # backend="auto" uses the kernel up to here (see the comment in gru_feedback)
MAX_H = 128       # larger weight blocks overflow an H100's 227 KB of shared memory


def _check(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps):
    named = dict(eps=eps, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                 bias_hh=bias_hh, weight_m=weight_m)
    for k, v in named.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"gru_feedback: {k} must be a tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"gru_feedback: {k} must be a floating-point tensor, got {v.dtype}")
    if eps.dim() != 2:
        raise ValueError(f"gru_feedback: eps must be [B, E], got shape {tuple(eps.shape)}")
    B, E = eps.shape
    if weight_hh.dim() != 2 or weight_hh.shape[0] != 3 * weight_hh.shape[1]:
        raise ValueError(f"gru_feedback: weight_hh must be [3H, H], got {tuple(weight_hh.shape)}")
    H = weight_hh.shape[1]
    want = dict(weight_ih=(3 * H, E), bias_ih=(3 * H,), bias_hh=(3 * H,), weight_m=(E, H))
    for k, shape in want.items():
        if tuple(named[k].shape) != shape:
            raise ValueError(f"gru_feedback: {k} must be {list(shape)} for eps [B={B}, E={E}] and "
                             f"H={H}, got {list(named[k].shape)}")
    if B == 0 or H == 0 or E == 0:
        raise ValueError(f"gru_feedback: empty sizes B={B}, E={E}, H={H}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"gru_feedback: steps must be an integer >= 1, got {steps!r}")
    devices = {str(v.device) for v in named.values()}
    if len(devices) > 1:
        raise ValueError(f"gru_feedback: all tensors must be on one device, got {sorted(devices)}")
    dtypes = {v.dtype for v in named.values()}
    if len(dtypes) > 1:
        raise TypeError(f"gru_feedback: all tensors must share one dtype, got {sorted(map(str, dtypes))}")


def gru_feedback(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps, backend="auto"):
    """Runs the GRU with linear feedback for `steps` steps.

    Args:
        eps: [B, E] the first input e(1) (the only noise; the rest of the path is deterministic).
        weight_ih: [3H, E], weight_hh: [3H, H], bias_ih: [3H], bias_hh: [3H]: exactly the
            parameters of torch.nn.GRUCell(E, H), gate order r, z, n.
        weight_m: [E, H] feedback weight (no bias): e(t+1) = h(t) @ weight_m.T.
        steps: number of steps T >= 1.
        backend: "triton" (fused kernels; CUDA tensors, or CPU ones under TRITON_INTERPRET=1),
            "torch" (the reference), or "auto" (Triton for CUDA tensors when it imports).
    Returns:
        z: [B, T, H], z(t) = h(t), in the dtype of the inputs (fp16/bf16 are computed in fp32).
        Differentiable with respect to every tensor argument.
    """
    global _said_fallback
    _check(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"gru_feedback: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    H = weight_hh.shape[1]
    if backend == "auto":
        # measured on an H100 (README): the fused kernel wins by 25-150x at H = 16; from H = 64 on
        # its weights no longer fit in registers and the eager loop is faster, so auto keeps it
        backend = "triton" if eps.is_cuda and triton is not None and H <= AUTO_MAX_H else "torch"
        if backend == "torch" and not _said_fallback:
            _said_fallback = True
            why = ("triton is not installed" if triton is None and eps.is_cuda else
                   f"tensors are on {eps.device}" if not eps.is_cuda else
                   f"H = {H} > {AUTO_MAX_H}, where the fused kernel is slower than the loop")
            warnings.warn(f"gru_feedback: {why}, using the PyTorch reference loop instead of the "
                          "fused Triton kernel", stacklevel=2)
    if backend == "torch":
        return gru_feedback_ref(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps)
    if triton is None:
        raise RuntimeError("gru_feedback: backend='triton' needs triton: pip install triton")
    if not eps.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("gru_feedback: backend='triton' needs CUDA tensors (or set "
                           "TRITON_INTERPRET=1 before importing triton to run it on the CPU)")
    if eps.is_cuda and H > MAX_H:
        raise ValueError(f"gru_feedback: the compiled Triton kernel supports H <= {MAX_H} (its "
                         f"weight blocks must fit in shared memory), got H = {H}; use "
                         "backend='torch' or 'auto'")
    args = [t.float().contiguous() for t in (eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m)]
    return _fwd_op(*args, steps).to(eps.dtype)
