"""Fused GRU with linear feedback: the MDBiGAN motion sampler (paper eqs. 12-14) as Triton kernels.

    h(0) = 0,  e(1) = eps,  h(t) = GRUCell(e(t), h(t-1)),  z(t) = h(t),  e(t+1) = W_m h(t)

Eager PyTorch runs this as a Python loop of ~10 small kernels per step (cuDNN's GRU cannot express
the feedback). Here forward and backward are one launch each: a program owns BLOCK_B rows of the
batch and walks all steps with its state, and when they fit (HOIST) the weights, in registers.
One matrix product per step: the feedback has no bias, so for t >= 2 W_ih e(t) = W_c h(t-1) with
W_c = W_ih W_m, and every gate comes from h(t-1) through the four [H, H] blocks of [W_c; W_hh].
The backward recomputes the gates from the saved z in reverse and sums each weight's and bias's
gradient over its rows in registers: SPLIT programs share a block of rows, each summing 4 / SPLIT
of the four gates' [H, H] sums (at H = 64 four at once do not fit). Each program then stores its
sums, reads them back 16 columns at a time to recover dW_ih = dW_c W_m^T + (step 1's term) and
dW_m = W_ih^T dW_c, and writes one row of partial sums; the host adds them (no atomics). Step 1
and those products run over E in chunks of 16, so no register block grows with E.

Sizes: H <= MAX_H = 64, where the launch tables' configurations compile spill-free for an A100
and an H100 (`python -m kernels.bench --aot` shows it without a GPU; tests/test_kernel_aot.py
checks it); with CUDA tensors of larger H, gru_feedback runs the reference loop and says so once.

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
    python -m kernels.bench --aot                              # registers, spills, shared memory
                                                               # for sm_80 / sm_90, no GPU needed
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
    def _load_t(p, n_out, n_in, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
                NATURAL: tl.constexpr = False):
        """Row-major [n_out, n_in] weight at p as a zero-padded [BLOCK_IN, BLOCK_OUT] block, W^T,
        so that x @ block = x @ W^T; NATURAL: as the [BLOCK_OUT, BLOCK_IN] block W itself."""
        if NATURAL:
            i_out = tl.arange(0, BLOCK_OUT)[:, None]
            i_in = tl.arange(0, BLOCK_IN)[None, :]
        else:
            i_in = tl.arange(0, BLOCK_IN)[:, None]
            i_out = tl.arange(0, BLOCK_OUT)[None, :]
        return tl.load(p + i_out * n_in + i_in, mask=(i_in < n_in) & (i_out < n_out), other=0.0)

    @triton.jit
    def _load_2d(p, stride_r, stride_c, n_r, n_c, BR: tl.constexpr, BC: tl.constexpr):
        """The [BR, BC] block at p of a matrix with strides (stride_r, stride_c), zero outside
        its first n_r rows and n_c columns."""
        i_r = tl.arange(0, BR)[:, None]
        i_c = tl.arange(0, BC)[None, :]
        return tl.load(p + i_r * stride_r + i_c * stride_c, mask=(i_r < n_r) & (i_c < n_c),
                       other=0.0)

    @triton.jit
    def _block(p_wc, p_whh, H, G: tl.constexpr, BH: tl.constexpr, NATURAL: tl.constexpr = False):
        """Block G of the four through which h(t-1) gives every gate at t >= 2, as a [BH, BH] W^T
        (or, NATURAL, W itself, as the backward's products with the gates' gradients take it):
        0: W_c,r + W_hh,r; 1: W_c,z + W_hh,z; 2: W_c,n (input side of n); 3: W_hh,n (state side)."""
        if G == 0:
            return _load_t(p_wc, H, H, BH, BH, NATURAL) + _load_t(p_whh, H, H, BH, BH, NATURAL)
        elif G == 1:
            return (_load_t(p_wc + H * H, H, H, BH, BH, NATURAL)
                    + _load_t(p_whh + H * H, H, H, BH, BH, NATURAL))
        elif G == 2:
            return _load_t(p_wc + 2 * H * H, H, H, BH, BH, NATURAL)
        else:
            return _load_t(p_whh + 2 * H * H, H, H, BH, BH, NATURAL)

    @triton.jit
    def _folded(p_wc, p_whh, H, BH: tl.constexpr):
        """The four blocks of _block (W^T), all at once: the ones kept in registers (HOIST)."""
        return (_block(p_wc, p_whh, H, 0, BH), _block(p_wc, p_whh, H, 1, BH),
                _block(p_wc, p_whh, H, 2, BH), _block(p_wc, p_whh, H, 3, BH))

    @triton.jit
    def _gates_reloaded(x, p_wc, p_whh, H, bias_r, bias_z, bias_in, bias_hn, BH: tl.constexpr,
                        PRECISION: tl.constexpr):
        """_gates of a step t >= 2 (and g_hn), each block loaded at its product (HOIST off):
        Triton moves these loop-invariant loads out of the loop and keeps the blocks in shared
        memory, where the products read them each step, instead of registers."""
        g_hn = tl.dot(x, _block(p_wc, p_whh, H, 3, BH), input_precision=PRECISION) + bias_hn
        r = _sigmoid(tl.dot(x, _block(p_wc, p_whh, H, 0, BH), input_precision=PRECISION) + bias_r)
        u = _sigmoid(tl.dot(x, _block(p_wc, p_whh, H, 1, BH), input_precision=PRECISION) + bias_z)
        n = _tanh(tl.dot(x, _block(p_wc, p_whh, H, 2, BH), input_precision=PRECISION)
                  + bias_in + r * g_hn)
        return r, u, n, g_hn

    @triton.jit
    def _input_gates(p_eps, i_b, B, p_wih, H, E, bias_r, bias_z, bias_in, bias_hn,
                     BLOCK_B: tl.constexpr, BH: tl.constexpr, EC: tl.constexpr,
                     PRECISION: tl.constexpr):
        """_gates of step 1, with h(0) = 0 (n's state side is bias_hn alone), from eps through
        W_ir^T, W_iz^T, W_in^T: EC columns of eps (rows of the blocks) at a time, read from memory,
        so that no operand grows with E."""
        g_r = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        g_z = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        g_n = tl.zeros([BLOCK_B, BH], dtype=tl.float32)
        for e in range(0, E, EC):
            i_e = e + tl.arange(0, EC)[None, :]
            x = tl.load(p_eps + i_b * E + i_e, mask=(i_b < B) & (i_e < E), other=0.0)
            g_r += tl.dot(x, _load_2d(p_wih + e, 1, E, E - e, H, BR=EC, BC=BH),
                          input_precision=PRECISION)
            g_z += tl.dot(x, _load_2d(p_wih + H * E + e, 1, E, E - e, H, BR=EC, BC=BH),
                          input_precision=PRECISION)
            g_n += tl.dot(x, _load_2d(p_wih + 2 * H * E + e, 1, E, E - e, H, BR=EC, BC=BH),
                          input_precision=PRECISION)
        r = _sigmoid(g_r + bias_r)
        u = _sigmoid(g_z + bias_z)
        return r, u, _tanh(g_n + bias_in + r * bias_hn)

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
        BLOCK_B: tl.constexpr, BH: tl.constexpr, HOIST: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        EC: tl.constexpr = 16     # step 1's product: EC columns of eps at a time
        i_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]   # (BLOCK_B, 1)
        i_h = tl.arange(0, BH)[None, :]
        m_h = (i_b < B) & (i_h < H)
        p_zb = p_z + i_b * T * H + i_h                            # row i_b of z, step 0
        bias_r, bias_z, bias_in, bias_hn = _biases(p_bias_ih, p_bias_hh, i_h, H)

        # step 1: h(0) = 0, so the state's products vanish and eps is the input
        r, u, n = _input_gates(p_eps, i_b, B, p_wih, H, E, bias_r, bias_z, bias_in, bias_hn,
                               BLOCK_B, BH, EC, PRECISION)
        b_h = tl.where(m_h, (1.0 - u) * n, 0.0)                   # padding kept exactly zero
        tl.store(p_zb, b_h.to(p_z.dtype.element_ty), mask=m_h)

        if HOIST:  # the four blocks stay in registers for all steps
            hw_r, hw_z, hw_n, hw_hn = _folded(p_wc, p_whh, H, BH=BH)
        for t in range(1, T):
            if HOIST:
                g_hn = tl.dot(b_h, hw_hn, input_precision=PRECISION) + bias_hn
                r, u, n = _gates(b_h, hw_r, hw_z, hw_n, g_hn, bias_r, bias_z, bias_in, PRECISION)
            else:  # the blocks in shared memory instead (_gates_reloaded)
                r, u, n, g_hn = _gates_reloaded(b_h, p_wc, p_whh, H, bias_r, bias_z, bias_in, bias_hn,
                                                BH, PRECISION)
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
    def _store_block(p, block, n_rows, n_cols, BR: tl.constexpr, BC: tl.constexpr):
        """Stores a [BR, BC] block as the row-major [n_rows, n_cols] matrix at p."""
        i_r = tl.arange(0, BR)[:, None]
        i_c = tl.arange(0, BC)[None, :]
        tl.store(p + i_r * n_cols + i_c, block.to(p.dtype.element_ty),
                 mask=(i_r < n_rows) & (i_c < n_cols))

    @triton.jit
    def _sum_block(p_row, H, E, G: tl.constexpr):
        """Where gate G's [H, H] sum d_G^T h(t-1) lies in a row of partials: W_hh's block for r, z
        (W_c's as well: they meet h(t-1) summed) and n's state side; the row's last block for n's
        input side (W_c,n's, from which dW_ih and dW_m are computed)."""
        if G == 2:
            return p_row + 3 * H * E + 3 * H * H + 6 * H + E * H
        else:
            return p_row + 3 * H * E + (G - G // 3) * H * H

    @triton.jit
    def _store_sums(p_row, a, s, d1, H, E, i_h, G: tl.constexpr, BH: tl.constexpr):
        """Stores gate G's sum a = d_G^T h(t-1) over steps >= 2 at _sum_block, and its biases'
        gradients, s (the sum of d_G over those steps) + d1's (d_G at step 1) over the rows:
        dbias_ih's for G < 3, dbias_hh's for G != 2."""
        _store_block(_sum_block(p_row, H, E, G), a, n_rows=H, n_cols=H, BR=BH, BC=BH)
        total = (s + tl.sum(d1, 0))[None, :]
        p_dbias_ih = p_row + 3 * H * E + 3 * H * H
        if G < 3:
            tl.store(p_dbias_ih + G * H + i_h, total, mask=i_h < H)
        if G != 2:
            tl.store(p_dbias_ih + (3 + G - G // 3) * H + i_h, total, mask=i_h < H)

    @triton.jit
    def _input_partials(p_row, p_wih, p_wm, p_eps, i_b, B, d1, dw_m, e, H, E, G: tl.constexpr,
                        BH: tl.constexpr, EC: tl.constexpr, KC: tl.constexpr,
                        PRECISION: tl.constexpr):
        """For G < 3, columns e .. e + EC of dW_ih,G = dW_c,G W_m^T + d1^T eps, stored, and
        dw_m + rows e .. e + EC of W_ih,G^T dW_c,G ([EC, BH]) returned, from gate G's sum dW_c,G
        as _store_sums stored it (after a barrier). EC columns of the results and KC of dW_c,G
        at a time, read back from memory: a whole [BH, BH] operand, or one growing with E, in
        registers spills at BH = 64."""
        p_c = _sum_block(p_row, H, E, G)
        b_eps = tl.load(p_eps + i_b * E + e + tl.arange(0, EC)[None, :],
                        mask=(i_b < B) & (e + tl.arange(0, EC)[None, :] < E), other=0.0)
        dw_i = _outer(d1, b_eps, PRECISION)                                    # [BH, EC]
        for k in range(0, H, KC):
            c_cols = _load_2d(p_c + k, H, 1, H, H - k, BR=BH, BC=KC)           # dW_c,G[:, k:k+KC]
            w_mt = _load_2d(p_wm + e * H + k, 1, H, H - k, E - e, BR=KC, BC=EC)   # W_m[e:, k:]^T
            dw_i += tl.dot(c_cols, w_mt, input_precision=PRECISION)
            w_it = _load_2d(p_wih + (G * H + k) * E + e, 1, E, E - e, H - k,
                            BR=EC, BC=KC)                                  # W_ih,G[k:, e:]^T
            c_rows = _load_2d(p_c + k * H, H, 1, H - k, H, BR=KC, BC=BH)       # dW_c,G[k:k+KC, :]
            dw_m += tl.dot(w_it, c_rows, input_precision=PRECISION)
        i_r = tl.arange(0, BH)[:, None]
        i_c = e + tl.arange(0, EC)[None, :]
        tl.store(p_row + G * H * E + i_r * E + i_c, dw_i, mask=(i_r < H) & (i_c < E))
        return dw_m

    @triton.jit
    def _of(G: tl.constexpr, x_r, x_z, x_n, x_hn):
        """x of gate G (0: r, 1: z, 2: n's input side, 3: n's state side)."""
        if G == 0:
            return x_r
        elif G == 1:
            return x_z
        elif G == 2:
            return x_n
        else:
            return x_hn

    @triton.jit
    def _epilogue(p_row, p_wih, p_wm, p_eps, i_b, i_h, B, H, E, a_0, a_1, a_2, a_3,
                  s_r, s_z, s_n, s_hn, d_r, d_u, d_n, d_hn, G0: tl.constexpr, N: tl.constexpr,
                  BH: tl.constexpr, EC: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr):
        """A program's row of partial sums for its gates G0 .. G0 + N - 1, whose sums over steps
        >= 2 are a_0 .. a_{N-1} (s_* and d_* of all four gates: their sums over those steps and
        step 1's): first the sums as they are, and the biases'; then, once every thread's stores
        are visible, the products of the W_c sums read back that give dW_ih and dW_m, EC rows of
        dW_m at a time."""
        _store_sums(p_row, a_0, _of(G0, s_r, s_z, s_n, s_hn), _of(G0, d_r, d_u, d_n, d_hn), H, E,
                    i_h, G0, BH)
        if N >= 2:
            _store_sums(p_row, a_1, _of(G0 + 1, s_r, s_z, s_n, s_hn),
                        _of(G0 + 1, d_r, d_u, d_n, d_hn), H, E, i_h, G0 + 1, BH)
        if N == 4:   # G0 = 0
            _store_sums(p_row, a_2, s_n, d_n, H, E, i_h, 2, BH)
            _store_sums(p_row, a_3, s_hn, d_hn, H, E, i_h, 3, BH)
        tl.debug_barrier()   # the sums just stored are read back by other threads of the program
        if G0 < 3:           # a gate of W_ih among them
            p_dwm = p_row + 3 * H * E + 3 * H * H + 6 * H
            for e in range(0, E, EC):
                dw_m = tl.zeros([EC, BH], dtype=tl.float32)
                for j in tl.static_range(N):
                    if G0 + j < 3:
                        dw_m = _input_partials(p_row, p_wih, p_wm, p_eps, i_b, B,
                                               _of(G0 + j, d_r, d_u, d_n, d_hn), dw_m, e, H, E,
                                               G0 + j, BH, EC, KC, PRECISION)
                i_r = e + tl.arange(0, EC)[:, None]
                tl.store(p_dwm + i_r * H + i_h, dw_m, mask=(i_r < E) & (i_h < H))

    @triton.jit(do_not_specialize=["B", "T"])
    def _bwd_kernel(
        p_eps, p_wih, p_whh, p_bias_ih, p_bias_hh, p_wc,   # as in _fwd_kernel
        p_wm,    # [E, H] fp32: feedback weight
        p_z,     # [B, T, H] fp32: forward outputs h(1..T)
        p_dz,    # [B, T, H] fp32: gradient of the loss w.r.t. z
        p_deps,  # [B, E] fp32 out: gradient w.r.t. eps
        p_part,  # [programs * SPLIT, PART] fp32 out: each program's sums, _partial_sizes' pieces
                 # (zeros where SPLIT > 1: a program writes only its gates' entries)
        B, T, H, E,
        BLOCK_B: tl.constexpr, BH: tl.constexpr, HOIST: tl.constexpr,
        SPLIT: tl.constexpr, PRECISION: tl.constexpr,
    ):
        # SPLIT programs share each block of rows, program g summing the weight gradients of gates
        # g * ACC .. g * ACC + ACC - 1 only (0: r, 1: z, 2: n's input side, 3: n's state side):
        # each holds ACC = 4 / SPLIT [BH, BH] sums in registers instead of four, for SPLIT times
        # the recurrence's work
        ACC: tl.constexpr = 4 // SPLIT
        KC: tl.constexpr = 16     # the epilogue's products: KC columns of a W_c sum at a time,
        EC: tl.constexpr = 16     # for EC columns of dW_ih's blocks (rows of dW_m)
        g = tl.program_id(1)
        i_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
        i_h = tl.arange(0, BH)[None, :]
        m_h = (i_b < B) & (i_h < H)
        p_zb = p_z + i_b * T * H + i_h
        p_dzb = p_dz + i_b * T * H + i_h
        bias_r, bias_z, bias_in, bias_hn = _biases(p_bias_ih, p_bias_hh, i_h, H)
        # sums over this program's rows and steps >= 2: a_j = d_G^T h(t-1) for its gates G = g * ACC
        # + j (dW_c,r and dW_hh,r are both a_r, likewise z), s_* = the gates' gradients (the biases')
        a_0 = tl.zeros([BH, BH], dtype=tl.float32)
        a_1 = tl.zeros([BH, BH], dtype=tl.float32)   # used where ACC >= 2
        a_2 = tl.zeros([BH, BH], dtype=tl.float32)   # and these where ACC = 4
        a_3 = tl.zeros([BH, BH], dtype=tl.float32)
        s_r = tl.zeros([BH], dtype=tl.float32)
        s_z = tl.zeros([BH], dtype=tl.float32)
        s_n = tl.zeros([BH], dtype=tl.float32)
        s_hn = tl.zeros([BH], dtype=tl.float32)
        b_dh = tl.zeros([BLOCK_B, BH], dtype=tl.float32)          # gradient flowing into h(t)

        if HOIST:
            hw_r, hw_z, hw_n, hw_hn = _folded(p_wc, p_whh, H, BH=BH)
        for k in range(0, T - 1):
            t = T - 1 - k                                         # steps T .. 2, 0-based
            b_hp = tl.load(p_zb + (t - 1) * H, mask=m_h, other=0.0)   # h(t-1): recompute step t
            if HOIST:
                g_hn = tl.dot(b_hp, hw_hn, input_precision=PRECISION) + bias_hn
                r, u, n = _gates(b_hp, hw_r, hw_z, hw_n, g_hn, bias_r, bias_z, bias_in, PRECISION)
            else:
                r, u, n, g_hn = _gates_reloaded(b_hp, p_wc, p_whh, H, bias_r, bias_z, bias_in, bias_hn,
                                                BH, PRECISION)
            b_dh += tl.load(p_dzb + t * H, mask=m_h, other=0.0)
            d_r, d_u, d_n, d_hn = _gate_grads(b_dh, b_hp, r, u, n, g_hn, m_h)
            if ACC == 4:
                a_0 += _outer(d_r, b_hp, PRECISION)
                a_1 += _outer(d_u, b_hp, PRECISION)
                a_2 += _outer(d_n, b_hp, PRECISION)
                a_3 += _outer(d_hn, b_hp, PRECISION)
            elif ACC == 2:   # r and z (g = 0) or n's two sides (g = 1)
                a_0 += _outer(tl.where(g == 0, d_r, d_n), b_hp, PRECISION)
                a_1 += _outer(tl.where(g == 0, d_u, d_hn), b_hp, PRECISION)
            else:
                d_g = tl.where(g == 0, d_r, tl.where(g == 1, d_u, tl.where(g == 2, d_n, d_hn)))
                a_0 += _outer(d_g, b_hp, PRECISION)
            s_r += tl.sum(d_r, 0)
            s_z += tl.sum(d_u, 0)
            s_n += tl.sum(d_n, 0)
            s_hn += tl.sum(d_hn, 0)
            # into h(t-1): directly (u h(t-1)) and through the four blocks, transposed back
            if HOIST:
                b_dh = (b_dh * u
                        + tl.dot(d_r, tl.trans(hw_r), input_precision=PRECISION)
                        + tl.dot(d_u, tl.trans(hw_z), input_precision=PRECISION)
                        + tl.dot(d_n, tl.trans(hw_n), input_precision=PRECISION)
                        + tl.dot(d_hn, tl.trans(hw_hn), input_precision=PRECISION))
            else:  # as W itself, no transpose (in shared memory too)
                b_dh = b_dh * u + tl.dot(d_r, _block(p_wc, p_whh, H, 0, BH, NATURAL=True),
                                         input_precision=PRECISION)
                b_dh += tl.dot(d_u, _block(p_wc, p_whh, H, 1, BH, NATURAL=True),
                               input_precision=PRECISION)
                b_dh += tl.dot(d_n, _block(p_wc, p_whh, H, 2, BH, NATURAL=True),
                               input_precision=PRECISION)
                b_dh += tl.dot(d_hn, _block(p_wc, p_whh, H, 3, BH, NATURAL=True),
                               input_precision=PRECISION)

        # step 1: from eps with h(0) = 0
        r, u, n = _input_gates(p_eps, i_b, B, p_wih, H, E, bias_r, bias_z, bias_in, bias_hn,
                               BLOCK_B, BH, EC, PRECISION)
        b_dh += tl.load(p_dzb, mask=m_h, other=0.0)
        d_r, d_u, d_n, d_hn = _gate_grads(b_dh, tl.zeros([BLOCK_B, BH], dtype=tl.float32),
                                          r, u, n, bias_hn, m_h)
        if g == 0:   # d eps, once a block of rows, EC columns at a time: through W_ir, W_iz, W_in
            for e in range(0, E, EC):
                b_deps = tl.dot(d_r, _load_2d(p_wih + e, E, 1, H, E - e, BR=BH, BC=EC),
                                input_precision=PRECISION)
                b_deps += tl.dot(d_u, _load_2d(p_wih + H * E + e, E, 1, H, E - e, BR=BH, BC=EC),
                                 input_precision=PRECISION)
                b_deps += tl.dot(d_n, _load_2d(p_wih + 2 * H * E + e, E, 1, H, E - e, BR=BH, BC=EC),
                                 input_precision=PRECISION)
                i_ec = e + tl.arange(0, EC)[None, :]
                tl.store(p_deps + i_b * E + i_ec, b_deps.to(p_deps.dtype.element_ty),
                         mask=(i_b < B) & (i_ec < E))

        # this program's row of partial sums, in _partial_sizes' order
        p_row = p_part + (tl.program_id(0) * SPLIT + g) * (3 * H * E + 4 * H * H + 6 * H + E * H)
        if ACC == 4:
            _epilogue(p_row, p_wih, p_wm, p_eps, i_b, i_h, B, H, E, a_0, a_1, a_2, a_3, s_r, s_z, s_n,
                      s_hn, d_r, d_u, d_n, d_hn, 0, 4, BH, EC, KC, PRECISION)
        elif ACC == 2:
            if g == 0:
                _epilogue(p_row, p_wih, p_wm, p_eps, i_b, i_h, B, H, E, a_0, a_1, a_2, a_3, s_r, s_z,
                          s_n, s_hn, d_r, d_u, d_n, d_hn, 0, 2, BH, EC, KC, PRECISION)
            else:
                _epilogue(p_row, p_wih, p_wm, p_eps, i_b, i_h, B, H, E, a_0, a_1, a_2, a_3, s_r, s_z,
                          s_n, s_hn, d_r, d_u, d_n, d_hn, 2, 2, BH, EC, KC, PRECISION)
        else:
            for G in tl.static_range(4):   # the one of program g: a runtime choice among four
                if g == G:
                    _epilogue(p_row, p_wih, p_wm, p_eps, i_b, i_h, B, H, E, a_0, a_1, a_2, a_3, s_r,
                              s_z, s_n, s_hn, d_r, d_u, d_n, d_hn, G, 1, BH, EC, KC, PRECISION)

# Per padded H up to MAX_H, the forward's (BLOCK_B, num_warps, HOIST: weights kept in registers)
# and the backward's (BLOCK_B, num_warps, HOIST, SPLIT: programs per block of rows, each summing
# 4 / SPLIT gates' weight gradients). Chosen so that every one compiles spill-free for an A100
# (sm_80) and an H100 (sm_90) with Triton 3.9 (`python -m kernels.bench --aot`, checked by
# tests/test_kernel_aot.py; a [BH, BH] product operand in registers costs K registers a row or
# column it holds, so larger H takes fewer rows a program, more warps and, in the backward, fewer
# sums a program); which is fastest is for `python -m kernels.bench --tune` on a GPU to measure.
FWD_TUNING = {16: (16, 2, True), 32: (16, 4, True), 64: (8, 8, True)}
BWD_TUNING = {16: (16, 2, True, 1), 32: (32, 8, True, 1), 64: (8, 8, True, 4)}
# precision="tf32" multiplies on tensor cores, whose layouts take other registers: its entries,
# where they differ (the backward's at H = 32 spills 120-216 bytes with BWD_TUNING's)
FWD_TUNING_TF32 = {}
BWD_TUNING_TF32 = {32: (16, 8, True, 1)}
# H = 128 does not fit: its four [128, 128] weight blocks ask 260 KB of shared memory kept, or spill
# kilobytes reloaded, and the backward's sums 256 registers a thread; larger H runs the loop
MAX_H = 64


def _launch_config(H, E, backward, precision="ieee"):
    """The kernel's constexprs and launch options for hidden size H (E chooses none: the kernels
    run over it in chunks) from the tuning tables of `precision`; H above MAX_H (run only by the
    interpreter) takes MAX_H's."""
    BH = max(16, triton.next_power_of_2(H))
    if backward:
        table = {**BWD_TUNING, **BWD_TUNING_TF32} if precision == "tf32" else BWD_TUNING
        block_b, warps, hoist, split = table[min(BH, MAX_H)]
        return dict(BLOCK_B=block_b, BH=BH, HOIST=hoist, SPLIT=split, num_warps=warps, num_stages=1)
    table = {**FWD_TUNING, **FWD_TUNING_TF32} if precision == "tf32" else FWD_TUNING
    block_b, warps, hoist = table[min(BH, MAX_H)]
    return dict(BLOCK_B=block_b, BH=BH, HOIST=hoist, num_warps=warps, num_stages=1)


def _partial_sizes(H, E):
    """Sizes of dW_ih, dW_hh, dbias_ih, dbias_hh, dW_m and dW_c,n in one program's row of
    partial sums (the last, n's input side of dW_c = dW_ih W_m, is what the kernel computes
    dW_ih,n and dW_m from; the sum includes it, nothing reads it)."""
    return [3 * H * E, 3 * H * H, 3 * H, 3 * H, E * H, H * H]


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
    d_wih, d_whh, d_bias_ih, d_bias_hh, d_wm, _ = flat.split(_partial_sizes(H, E))
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
        cfg = _launch_config(H, E, backward=False, precision=precision)
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
        cfg = _launch_config(H, E, backward=True, precision=precision)
        programs = triton.cdiv(B, cfg["BLOCK_B"])
        sizes = _partial_sizes(H, E)
        deps = eps.new_empty(B, E)
        # SPLIT > 1: each of a block's programs writes only its gates' entries of its row
        part = (eps.new_zeros if cfg["SPLIT"] > 1 else eps.new_empty)(programs * cfg["SPLIT"],
                                                                      sum(sizes))
        w_c = torch.mm(weight_ih, weight_m)
        wrap_triton(_bwd_kernel)[(programs, cfg["SPLIT"])](
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


_said_fallback = False   # the warnings gru_feedback gives once a process
_said_too_big = False
# backend="auto" uses the kernel up to this H: the sizes where it is measured faster than the
# eager loop on an H100 (README); larger H keeps the loop until a measurement says otherwise
AUTO_MAX_H = 32


def _too_big(hidden):
    """Why the compiled kernels do not take hidden size `hidden` (a clause), or None."""
    if hidden > MAX_H:
        return (f"H = {hidden} > MAX_H = {MAX_H}, the largest H whose kernels fit an A100's and an "
                "H100's registers and shared memory (python -m kernels.bench --aot)")
    return None


def _kernel_missing(hidden):
    """Why CUDA tensors of hidden size `hidden` do not get the kernel from backend="auto", or None."""
    why = _fused_unavailable() or _too_big(hidden)
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


def _warn_too_big(hidden):
    """backend="triton" with CUDA tensors of H > MAX_H runs the loop: said once a process."""
    global _said_too_big
    if not _said_too_big:
        _said_too_big = True
        warnings.warn(f"gru_feedback: {_too_big(hidden)}; running the PyTorch reference loop "
                      "instead of the fused Triton kernel", stacklevel=3)


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
        backend: "triton" (fused kernels; CUDA tensors with H <= MAX_H, larger H runs the
            reference with a warning, once; or CPU tensors under TRITON_INTERPRET=1, any H),
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
    if eps.is_cuda and H > MAX_H:   # the interpreter takes any H
        _warn_too_big(H)
        return gru_feedback_ref(eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m, steps)
    # converted only when needed: each conversion is a host dispatch even when it changes nothing
    args = [t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()
            for t in (eps, weight_ih, weight_hh, bias_ih, bias_hh, weight_m)]
    z = _fwd_op(*args, steps, precision)
    return z if eps.dtype == torch.float32 else z.to(eps.dtype)
