"""Triton kernels of MDBiGAN: the fused GRU-with-feedback motion sampler (fused_recurrent.py).

    from kernels import gru_feedback, gru_feedback_ref, backend_for
    from kernels import fused_recurrent    # the module: launch tables, AUTO_MAX_H, the raw ops
    python -m kernels.bench                # benchmark against the eager and compiled loops
    python -m kernels.bench --aot          # no GPU: registers, spills, shared memory for sm_80/90
"""
from .fused_recurrent import backend_for, gru_feedback, gru_feedback_ref

__all__ = ["backend_for", "gru_feedback", "gru_feedback_ref"]
