"""Fused GRU with linear feedback: the MDBiGAN motion sampler (paper eqs. 12-14) as Triton kernels.

    h(0) = 0,  e(1) = eps,  h(t) = GRUCell(e(t), h(t-1)),  z(t) = h(t),  e(t+1) = W_m h(t)

Eager PyTorch runs this as a Python loop of ~10 small kernels per step (cuDNN's GRU cannot express
the feedback). Here forward and backward are one launch each: a program owns BLOCK_B rows of the
batch and walks all steps with its state, and when they fit (HOIST) the weights, in registers.
One matrix product per step: the feedback has no bias, so for t >= 2 W_ih e(t) = W_c h(t-1) with
W_c = W_ih W_m, and every gate comes from h(t-1) through the four [H, H] blocks of [W_c; W_hh].
The backward recomputes the gates from the saved z in reverse, sums each weight's and bias's
gradient over its rows in registers, recovers dW_ih = dW_c W_m^T + (step 1's term) and
dW_m = W_ih^T dW_c, and writes one partial sum per program; the host adds them (no atomics).

Layers, as in fla-org/flash-linear-attention's fla/ops/hgrn/fused_recurrent.py: `gru_feedback_ref`
(the readable PyTorch spec), `_fwd_kernel`/`_bwd_kernel` -> `torch.library.triton_op`s
`mdbigan::gru_feedback_fwd/_bwd` with an autograd formula -> `gru_feedback`.

The file stands alone (torch, and triton for the kernels; nothing else of this repository), so it
can be copied into another project. The reference needs only torch; the kernels need
PyTorch >= 2.6 (torch.library.triton_op and wrap_triton) and say so when it is older.

Usage:
    from kernels import gru_feedback                 # or, copied alone: from fused_recurrent import ...
    z = gru_feedback(eps, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                     linear.weight, steps=20)            # [B, 20, H], Triton on CUDA
    backend, reason = backend_for("cuda", hidden=16)     # what backend="auto" runs, and why
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
    def _load_t(p, n_out, n_in, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr):
        """Row-major [n_out, n_in] weight at p as a zero-padded [BLOCK_IN, BLOCK_OUT] block, W^T,
        so that x @ block = x @ W^T."""
        i_in = tl.arange(0, BLOCK_IN)[:, None]
        i_out = tl.arange(0, BLOCK_OUT)[None, :]
        return tl.load(p + i_out * n_in + i_in, mask=(i_in < n_in) & (i_out < n_out), other=0.0)

    @triton.jit
    def _folded(p_wc, p_whh, H, BH: tl.constexpr):
        """The four [BH, BH] blocks (W^T) through which h(t-1) gives every gate at t >= 2:
        W_c,r + W_hh,r; W_c,z + W_hh,z; W_c,n (input side of n); W_hh,n (state side of n)."""
        w_r = (_load_t(p_wc, n_out=H, n_in=H, BLOCK_OUT=BH, BLOCK_IN=BH)
               + _load_t(p_whh, n_out=H, n_in=H, BLOCK_OUT=BH, BLOCK_IN=BH))
        w_z = (_load_t(p_wc + H * H, n_out=H, n_in=H, BLOCK_OUT=BH, BLOCK_IN=BH)
               + _load_t(p_whh + H * H, n_out=H, n_in=H, BLOCK_OUT=BH, BLOCK_IN=BH))
        w_n = _load_t(p_wc + 2 * H * H, n_out=H, n_in=H, BLOCK_OUT=BH, BLOCK_IN=BH)
        w_hn = _load_t(p_whh + 2 * H * H, n_out=H, n_in=H, BLOCK_OUT=BH, BLOCK_IN=BH)
        return w_r, w_z, w_n, w_hn

    @triton.jit
    def _input_blocks(p_wih, H, E, BH: tl.constexpr, BE: tl.constexpr):
        """W_ir^T, W_iz^T, W_in^T as [BE, BH] blocks: step 1's weights on eps."""
        w_ir = _load_t(p_wih, n_out=H, n_in=E, BLOCK_OUT=BH, BLOCK_IN=BE)
        w_iz = _load_t(p_wih + H * E, n_out=H, n_in=E, BLOCK_OUT=BH, BLOCK_IN=BE)
        w_in = _load_t(p_wih + 2 * H * E, n_out=H, n_in=E, BLOCK_OUT=BH, BLOCK_IN=BE)
        return w_ir, w_iz, w_in

    @triton.jit
    def _biases(p_bias_ih, p_bias_hh, i_h, H):
        """[1, BH] rows: bias_r and bias_z, the r and z parts of bias_ih + bias_hh (summed as their
        gates are); bias_in, n's part of bias_ih; bias_hn, n's part of bias_hh (apart: the reset
        gate scales it)."""
        m = i_h < H
        bias_r = tl.load(p_bias_ih + i_h, mask=m, other=0.0) + tl.load(p_bias_hh + i_h, mask=m, other=0.0)
        bias_z = (tl.load(p_bias_ih + H + i_h, mask=m, other=0.0)
                  + tl.load(p_bias_hh + H + i_h, mask=m, other=0.0))
        bias_in = tl.load(p_bias_ih + 2 * H + i_h, mask=m, other=0.0)
        bias_hn = tl.load(p_bias_hh + 2 * H + i_h, mask=m, other=0.0)
        return bias_r, bias_z, bias_in, bias_hn

    @triton.jit
    def _gates(x, w_r, w_z, w_n, g_hn, bias_r, bias_z, bias_in, PRECISION: tl.constexpr):
        """r, z (called u) and n of one step, from x through three [BX, BH] blocks (W^T);
        g_hn = W_hn h(t-1) + bias_hn, the state side of n, which the reset gate scales."""
        r = _sigmoid(tl.dot(x, w_r, input_precision=PRECISION) + bias_r)
        u = _sigmoid(tl.dot(x, w_z, input_precision=PRECISION) + bias_z)
        return r, u, _tanh(tl.dot(x, w_n, input_precision=PRECISION) + bias_in + r * g_hn)

    @triton.jit(do_not_specialize=["B", "T"])   # a new batch size or length: no recompile
    def _fwd_kernel(
        p_eps,   # [B, E] fp32: e(1)
        p_wih,   # [3H, E] fp32: GRUCell.weight_ih (gates r, z, n)
        p_whh,   # [3H, H] fp32: GRUCell.weight_hh
        p_bias_ih,   # [3H] fp32: GRUCell.bias_ih
        p_bias_hh,   # [3H] fp32: GRUCell.bias_hh
        p_wc,    # [3H, H] fp32: W_ih @ W_m, the input gates' weight on h(t-1)
        p_z,     # [B, T, H] fp32 out: h(1..T)
        B, T, H, E,
        BLOCK_B: tl.constexpr, BH: tl.constexpr, BE: tl.constexpr, HOIST: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        i_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]   # (BLOCK_B, 1)
        i_h = tl.arange(0, BH)[None, :]
        i_e = tl.arange(0, BE)[None, :]
        m_h = (i_b < B) & (i_h < H)
        p_zb = p_z + i_b * T * H + i_h                            # row i_b of z, step 0
        bias_r, bias_z, bias_in, bias_hn = _biases(p_bias_ih, p_bias_hh, i_h, H)

        # step 1: h(0) = 0, so the state's products vanish and eps is the input
        b_eps = tl.load(p_eps + i_b * E + i_e, mask=(i_b < B) & (i_e < E), other=0.0)
        w_ir, w_iz, w_in = _input_blocks(p_wih, H, E, BH=BH, BE=BE)
        r, u, n = _gates(b_eps, w_ir, w_iz, w_in, bias_hn, bias_r, bias_z, bias_in, PRECISION)
        b_h = tl.where(m_h, (1.0 - u) * n, 0.0)                   # padding kept exactly zero
        tl.store(p_zb, b_h.to(p_z.dtype.element_ty), mask=m_h)

        if HOIST:  # the four blocks stay in registers for all steps
            hw_r, hw_z, hw_n, hw_hn = _folded(p_wc, p_whh, H, BH=BH)
        for t in range(1, T):
            if HOIST:
                w_r, w_z, w_n, w_hn = hw_r, hw_z, hw_n, hw_hn
            else:  # too big for registers: reloaded at each step (L1/L2-resident)
                w_r, w_z, w_n, w_hn = _folded(p_wc, p_whh, H, BH=BH)
            g_hn = tl.dot(b_h, w_hn, input_precision=PRECISION) + bias_hn
            r, u, n = _gates(b_h, w_r, w_z, w_n, g_hn, bias_r, bias_z, bias_in, PRECISION)
            b_h = tl.where(m_h, (1.0 - u) * n + u * b_h, 0.0)
            tl.store(p_zb + t * H, b_h.to(p_z.dtype.element_ty), mask=m_h)

    @triton.jit
    def _gate_grads(b_dh, b_hp, r, u, n, g_hn, m_h):
        """Gradients of the pre-activations of r, z (u), n's input side and n's state side, from
        the gradient b_dh flowing into h(t); zero on padding."""
        d_n = tl.where(m_h, b_dh * (1.0 - u) * (1.0 - n * n), 0.0)
        d_u = tl.where(m_h, b_dh * (b_hp - n) * u * (1.0 - u), 0.0)
        d_r = tl.where(m_h, d_n * g_hn * r * (1.0 - r), 0.0)
        return d_r, d_u, d_n, d_n * r

    @triton.jit
    def _outer(d, x, PRECISION: tl.constexpr):
        """d^T @ x over the block's rows: [BH, BLOCK_B] @ [BLOCK_B, BX]."""
        return tl.dot(tl.trans(d), x, input_precision=PRECISION)

    @triton.jit
    def _store_colsum(p, block, i_h, H):
        """Stores the sum over the rows of a [BLOCK_B, BH] block as a length-H vector at p."""
        tl.store(p + i_h, tl.sum(block, 0)[None, :].to(p.dtype.element_ty), mask=i_h < H)

    @triton.jit
    def _store_block(p, block, n_rows, n_cols, BR: tl.constexpr, BC: tl.constexpr):
        """Stores a [BR, BC] block as the row-major [n_rows, n_cols] matrix at p."""
        i_r = tl.arange(0, BR)[:, None]
        i_c = tl.arange(0, BC)[None, :]
        tl.store(p + i_r * n_cols + i_c, block.to(p.dtype.element_ty), mask=(i_r < n_rows) & (i_c < n_cols))

    @triton.jit(do_not_specialize=["B", "T"])
    def _bwd_kernel(
        p_eps, p_wih, p_whh, p_bias_ih, p_bias_hh, p_wc,   # as in _fwd_kernel
        p_wm,    # [E, H] fp32: feedback weight
        p_z,     # [B, T, H] fp32: forward outputs h(1..T)
        p_dz,    # [B, T, H] fp32: gradient of the loss w.r.t. z
        p_deps,  # [B, E] fp32 out: gradient w.r.t. eps
        p_part,  # [programs, PART] fp32 out: this program's sums of dW_ih, dW_hh, dbias_ih, dbias_hh, dW_m
        B, T, H, E,
        BLOCK_B: tl.constexpr, BH: tl.constexpr, BE: tl.constexpr, HOIST: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        i_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
        i_h = tl.arange(0, BH)[None, :]
        i_e = tl.arange(0, BE)[None, :]
        m_h = (i_b < B) & (i_h < H)
        m_e = (i_b < B) & (i_e < E)
        p_zb = p_z + i_b * T * H + i_h
        p_dzb = p_dz + i_b * T * H + i_h
        bias_r, bias_z, bias_in, bias_hn = _biases(p_bias_ih, p_bias_hh, i_h, H)
        # sums over this program's rows and steps >= 2: a_* = d_*^T h(t-1) (dW_c,r and dW_hh,r are
        # both a_r, likewise z), s_* = the gates' gradients (the biases')
        a_r = tl.zeros([BH, BH], dtype=tl.float32)
        a_z = tl.zeros([BH, BH], dtype=tl.float32)
        a_n = tl.zeros([BH, BH], dtype=tl.float32)
        a_hn = tl.zeros([BH, BH], dtype=tl.float32)
        s_r = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        s_z = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        s_n = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        s_hn = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        b_dh = tl.zeros([BLOCK_B, BH], dtype=tl.float32)          # gradient flowing into h(t)

        if HOIST:
            hw_r, hw_z, hw_n, hw_hn = _folded(p_wc, p_whh, H, BH=BH)
        for k in range(0, T - 1):
            t = T - 1 - k                                         # steps T .. 2, 0-based
            if HOIST:
                w_r, w_z, w_n, w_hn = hw_r, hw_z, hw_n, hw_hn
            else:
                w_r, w_z, w_n, w_hn = _folded(p_wc, p_whh, H, BH=BH)
            b_hp = tl.load(p_zb + (t - 1) * H, mask=m_h, other=0.0)   # h(t-1): recompute step t
            g_hn = tl.dot(b_hp, w_hn, input_precision=PRECISION) + bias_hn
            r, u, n = _gates(b_hp, w_r, w_z, w_n, g_hn, bias_r, bias_z, bias_in, PRECISION)
            b_dh += tl.load(p_dzb + t * H, mask=m_h, other=0.0)
            d_r, d_u, d_n, d_hn = _gate_grads(b_dh, b_hp, r, u, n, g_hn, m_h)
            a_r += _outer(d_r, b_hp, PRECISION)
            a_z += _outer(d_u, b_hp, PRECISION)
            a_n += _outer(d_n, b_hp, PRECISION)
            a_hn += _outer(d_hn, b_hp, PRECISION)
            s_r += d_r
            s_z += d_u
            s_n += d_n
            s_hn += d_hn
            # into h(t-1): directly (u h(t-1)) and through the four blocks, transposed back
            b_dh = (b_dh * u
                    + tl.dot(d_r, tl.trans(w_r), input_precision=PRECISION)
                    + tl.dot(d_u, tl.trans(w_z), input_precision=PRECISION)
                    + tl.dot(d_n, tl.trans(w_n), input_precision=PRECISION)
                    + tl.dot(d_hn, tl.trans(w_hn), input_precision=PRECISION))

        # step 1: from eps with h(0) = 0
        w_ir, w_iz, w_in = _input_blocks(p_wih, H, E, BH=BH, BE=BE)
        b_eps = tl.load(p_eps + i_b * E + i_e, mask=m_e, other=0.0)
        r, u, n = _gates(b_eps, w_ir, w_iz, w_in, bias_hn, bias_r, bias_z, bias_in, PRECISION)
        b_dh += tl.load(p_dzb, mask=m_h, other=0.0)
        d_r, d_u, d_n, d_hn = _gate_grads(b_dh, tl.zeros([BLOCK_B, BH], dtype=tl.float32),
                                          r, u, n, bias_hn, m_h)
        b_deps = (tl.dot(d_r, tl.trans(w_ir), input_precision=PRECISION)
                  + tl.dot(d_u, tl.trans(w_iz), input_precision=PRECISION)
                  + tl.dot(d_n, tl.trans(w_in), input_precision=PRECISION))
        tl.store(p_deps + i_b * E + i_e, b_deps.to(p_deps.dtype.element_ty), mask=m_e)

        # this program's partial sums, in _partial_sizes' order
        p_dwih = p_part + tl.program_id(0) * (3 * H * E + 3 * H * H + 6 * H + E * H)
        p_dwhh = p_dwih + 3 * H * E
        p_dbias_ih = p_dwhh + 3 * H * H
        p_dbias_hh = p_dbias_ih + 3 * H
        p_dwm = p_dbias_hh + 3 * H
        # dW_ih = dW_c W_m^T + d(gates at step 1)^T eps; dW_m = W_ih^T dW_c, gate by gate
        w_mt = _load_t(p_wm, n_out=E, n_in=H, BLOCK_OUT=BE, BLOCK_IN=BH)   # [BH, BE]: W_m^T
        dw_ir = tl.dot(a_r, w_mt, input_precision=PRECISION) + _outer(d_r, b_eps, PRECISION)
        dw_iz = tl.dot(a_z, w_mt, input_precision=PRECISION) + _outer(d_u, b_eps, PRECISION)
        dw_in = tl.dot(a_n, w_mt, input_precision=PRECISION) + _outer(d_n, b_eps, PRECISION)
        _store_block(p_dwih, dw_ir, n_rows=H, n_cols=E, BR=BH, BC=BE)
        _store_block(p_dwih + H * E, dw_iz, n_rows=H, n_cols=E, BR=BH, BC=BE)
        _store_block(p_dwih + 2 * H * E, dw_in, n_rows=H, n_cols=E, BR=BH, BC=BE)
        dw_m = (tl.dot(w_ir, a_r, input_precision=PRECISION) + tl.dot(w_iz, a_z, input_precision=PRECISION)
                + tl.dot(w_in, a_n, input_precision=PRECISION))   # [BE, BH]
        _store_block(p_dwm, dw_m, n_rows=E, n_cols=H, BR=BE, BC=BH)
        _store_block(p_dwhh, a_r, n_rows=H, n_cols=H, BR=BH, BC=BH)
        _store_block(p_dwhh + H * H, a_z, n_rows=H, n_cols=H, BR=BH, BC=BH)
        _store_block(p_dwhh + 2 * H * H, a_hn, n_rows=H, n_cols=H, BR=BH, BC=BH)
        _store_colsum(p_dbias_ih, s_r + d_r, i_h, H)              # the biases: steps >= 2 and step 1
        _store_colsum(p_dbias_ih + H, s_z + d_u, i_h, H)
        _store_colsum(p_dbias_ih + 2 * H, s_n + d_n, i_h, H)
        _store_colsum(p_dbias_hh, s_r + d_r, i_h, H)
        _store_colsum(p_dbias_hh + H, s_z + d_u, i_h, H)
        _store_colsum(p_dbias_hh + 2 * H, s_hn + d_hn, i_h, H)


# Per padded H: (BLOCK_B, num_warps, weights kept in registers), a first guess until
# `python -m kernels.bench --tune` measures them on a GPU; the backward also holds four [BH, BH]
# gradient sums, so it keeps the weights in registers only at smaller H.
FWD_TUNING = {16: (16, 2, True), 32: (16, 4, True), 64: (16, 4, True), 128: (16, 8, False)}
BWD_TUNING = {16: (16, 2, True), 32: (16, 4, True), 64: (16, 4, False), 128: (16, 8, False)}
MAX_H = 128   # larger blocks overflow an H100's registers and shared memory


def _launch_config(H, E, backward):
    BH, BE = max(16, triton.next_power_of_2(H)), max(16, triton.next_power_of_2(E))
    block_b, warps, hoist = (BWD_TUNING if backward else FWD_TUNING)[min(BH, MAX_H)]
    return dict(BLOCK_B=block_b, BH=BH, BE=BE, HOIST=hoist, num_warps=warps, num_stages=1)


def _partial_sizes(H, E):
    """Sizes of dW_ih, dW_hh, dbias_ih, dbias_hh, dW_m in one program's row of partial sums."""
    return [3 * H * E, 3 * H * H, 3 * H, 3 * H, E * H]


# The kernels reach autograd and torch.compile as torch.library operators: custom_op with
# register_fake and register_autograd exist from PyTorch 2.4, triton_op and wrap_triton from 2.6.
MIN_TORCH = "2.6"
TORCH_HAS_OPS = all(hasattr(getattr(torch, "library", None), name)
                    for name in ("custom_op", "triton_op", "wrap_triton"))
if TORCH_HAS_OPS:
    from torch.library import wrap_triton
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _fused_unavailable():
    """Why the fused kernels cannot run in this process (a clause for a message), or None."""
    if triton is None:
        return "triton is not installed (pip install triton)"
    if not TORCH_HAS_OPS:
        return (f"torch {torch.__version__} lacks torch.library.triton_op, which the kernels need "
                f"(PyTorch >= {MIN_TORCH}: pip install -U 'torch>={MIN_TORCH}')")
    return None


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6], output)
    ctx.precision = inputs[7]


def _backward(ctx, dz):
    if dz.dtype != torch.float32 or not dz.is_contiguous():
        dz = dz.float().contiguous()
    E, H = ctx.saved_tensors[0].shape[1], ctx.saved_tensors[2].shape[1]    # eps, weight_hh
    deps, flat = _bwd_op(*ctx.saved_tensors, dz, ctx.precision)
    d_wih, d_whh, d_bias_ih, d_bias_hh, d_wm = flat.split(_partial_sizes(H, E))
    return (deps, d_wih.view(3 * H, E), d_whh.view(3 * H, H), d_bias_ih, d_bias_hh,
            d_wm.view(E, H), None, None)


# triton_op: eager calls launch the kernels directly (no wrap_triton dispatch, ~1 ms), and
# torch.compile sees the kernels inside. Triton's CPU interpreter gives kernels that cannot be
# traced with fake tensors, so there the ops are opaque custom_ops with the fake kernels below.
if _fused_unavailable() is None:
    _op = torch.library.custom_op if INTERPRET else torch.library.triton_op

    @_op("mdbigan::gru_feedback_fwd", mutates_args=())
    def _fwd_op(eps: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                bias_ih: torch.Tensor, bias_hh: torch.Tensor, weight_m: torch.Tensor, steps: int,
                precision: str) -> torch.Tensor:
        """The forward kernel: inputs fp32 and contiguous; z fp32 [B, steps, H]."""
        B, E = eps.shape
        H = weight_hh.shape[1]
        z = eps.new_empty(B, steps, H)
        w_c = torch.mm(weight_ih, weight_m)                       # [3H, H]: the fold
        cfg = _launch_config(H, E, backward=False)
        wrap_triton(_fwd_kernel)[(triton.cdiv(B, cfg["BLOCK_B"]),)](
            eps, weight_ih, weight_hh, bias_ih, bias_hh, w_c, z, B, steps, H, E,
            PRECISION=precision, **cfg)
        return z

    @_op("mdbigan::gru_feedback_bwd", mutates_args=())
    def _bwd_op(eps: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                bias_ih: torch.Tensor, bias_hh: torch.Tensor, weight_m: torch.Tensor,
                z: torch.Tensor, dz: torch.Tensor, precision: str) -> list[torch.Tensor]:
        """The backward kernel, then the sum of its per-program partials: d eps [B, E], and the
        weights' and biases' gradients flat, in _partial_sizes' order (one buffer: a custom
        operator's outputs may not be views of one another)."""
        B, T, H = z.shape
        E = eps.shape[1]
        cfg = _launch_config(H, E, backward=True)
        programs = triton.cdiv(B, cfg["BLOCK_B"])
        sizes = _partial_sizes(H, E)
        deps = eps.new_empty(B, E)
        part = eps.new_empty(programs, sum(sizes))
        w_c = torch.mm(weight_ih, weight_m)
        wrap_triton(_bwd_kernel)[(programs,)](
            eps, weight_ih, weight_hh, bias_ih, bias_hh, w_c, weight_m, z, dz, deps, part,
            B, T, H, E, PRECISION=precision, **cfg)
        return [deps, part.sum(0)]

    if INTERPRET:
        @_fwd_op.register_fake
        def _(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps, precision):
            return eps.new_empty(eps.shape[0], steps, weight_hh.shape[1])

        @_bwd_op.register_fake
        def _(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, z, dz, precision):
            H, E = weight_hh.shape[1], eps.shape[1]
            return [torch.empty_like(eps), eps.new_empty(sum(_partial_sizes(H, E)))]

    _fwd_op.register_autograd(_backward, setup_context=_setup_context)


_said_fallback = False
# backend="auto" uses the kernel up to this H: the sizes where it is measured faster than the
# eager loop on an H100 (README); larger H keeps the loop until a measurement says otherwise
AUTO_MAX_H = 32


def _kernel_missing(hidden):
    """Why CUDA tensors of hidden size `hidden` do not get the kernel from backend="auto", or None."""
    why = _fused_unavailable()
    if why is None and hidden > AUTO_MAX_H:
        why = f"H = {hidden} > AUTO_MAX_H = {AUTO_MAX_H}, where the kernel is not measured faster"
    return why


def backend_for(device, hidden):
    """What gru_feedback(backend="auto") runs for tensors on `device` with hidden size `hidden`:
    ("triton" or "torch", a short reason to print), e.g. ("torch", "PyTorch loop: CPU tensors").
    Off CUDA the loop is the expected path; on CUDA it is a fallback, which gru_feedback warns of."""
    device = torch.device(device)
    if device.type != "cuda":
        return "torch", f"PyTorch loop: {device.type.upper()} tensors"
    why = _kernel_missing(hidden)
    if why is not None:
        return "torch", f"PyTorch loop: {why}"
    return "triton", f"fused Triton kernel: CUDA tensors, H = {hidden} <= {AUTO_MAX_H}"


def _auto_backend(device, hidden):
    """backend_for's choice, with one warning a process when CUDA tensors miss the kernel (where a
    user expects it; elsewhere the loop is silent)."""
    global _said_fallback
    backend, _ = backend_for(device, hidden)
    if backend == "torch" and torch.device(device).type == "cuda" and not _said_fallback:
        _said_fallback = True
        warnings.warn(f"gru_feedback: {_kernel_missing(hidden)}; running the PyTorch reference loop "
                      "instead of the fused Triton kernel", stacklevel=3)
    return backend


def _check(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps):
    named = dict(eps=eps, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                 bias_hh=bias_hh, weight_m=weight_m)
    for k, v in named.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"gru_feedback: {k} must be a floating-point tensor, got "
                            f"{getattr(v, 'dtype', type(v).__name__)}")
    if eps.dim() != 2 or 0 in eps.shape:
        raise ValueError(f"gru_feedback: eps must be [B, E], B, E >= 1, got shape {tuple(eps.shape)}")
    B, E = eps.shape
    if weight_hh.dim() != 2 or weight_hh.shape[0] != 3 * weight_hh.shape[1] or weight_hh.numel() == 0:
        raise ValueError(f"gru_feedback: weight_hh must be [3H, H], H >= 1, got {tuple(weight_hh.shape)}")
    H = weight_hh.shape[1]
    want = dict(weight_ih=(3 * H, E), bias_ih=(3 * H,), bias_hh=(3 * H,), weight_m=(E, H))
    for k, shape in want.items():
        if tuple(named[k].shape) != shape:
            raise ValueError(f"gru_feedback: {k} must be {list(shape)} for eps [B={B}, E={E}] and "
                             f"H={H}, got {list(named[k].shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"gru_feedback: steps must be an integer >= 1, got {steps!r}")
    for attr, error in (("device", ValueError), ("dtype", TypeError)):
        seen = sorted({str(getattr(v, attr)) for v in named.values()})
        if len(seen) > 1:
            raise error(f"gru_feedback: all tensors must share one {attr}, got {seen}")


def gru_feedback(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps, backend="auto",
                 precision="ieee"):
    """Runs the GRU with linear feedback for `steps` steps.

    Args:
        eps: [B, E] the first input e(1) (the only noise; the rest of the path is deterministic).
        weight_ih: [3H, E], weight_hh: [3H, H], bias_ih: [3H], bias_hh: [3H]: exactly the
            parameters of torch.nn.GRUCell(E, H), gate order r, z, n.
        weight_m: [E, H] feedback weight (no bias): e(t+1) = h(t) @ weight_m.T.
        steps: number of steps T >= 1.
        backend: "triton" (fused kernels; CUDA tensors, or CPU ones under TRITON_INTERPRET=1),
            "torch" (the reference), or "auto" (backend_for's choice: Triton for CUDA tensors
            with H <= AUTO_MAX_H, the reference elsewhere; a warning, once, on CUDA without it).
        precision: the kernels' matrix products: "ieee" (exact fp32, the default) or "tf32"
            (faster tensor cores, ~1e-3 relative error). W_ih @ W_m is one torch.mm, which
            follows torch.backends.cuda.matmul.allow_tf32.
    Returns:
        z: [B, T, H], z(t) = h(t), in the dtype of the inputs (fp16/bf16 are computed in fp32).
        Differentiable with respect to every tensor argument.
    """
    _check(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"gru_feedback: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"gru_feedback: precision must be 'ieee' or 'tf32', got {precision!r}")
    H = weight_hh.shape[1]
    if backend == "auto":
        backend = _auto_backend(eps.device, H)
    if backend == "torch":
        return gru_feedback_ref(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps)
    why = _fused_unavailable()
    if why is not None:
        raise RuntimeError(f"gru_feedback: backend='triton' cannot run: {why}; backend='torch' "
                           "runs the reference")
    if not (eps.is_cuda or INTERPRET):
        raise RuntimeError("gru_feedback: backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 "
                           "set before importing triton to run it on the CPU")
    if eps.is_cuda and H > MAX_H:
        raise ValueError(f"gru_feedback: the compiled Triton kernel supports H <= {MAX_H} (its "
                         f"weight blocks must fit in shared memory), got H = {H}; use "
                         "backend='torch' or 'auto'")
    # converted only when needed: each conversion is a host dispatch even when it changes nothing
    args = [t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()
            for t in (eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m)]
    z = _fwd_op(*args, steps, precision)
    return z if eps.dtype == torch.float32 else z.to(eps.dtype)
