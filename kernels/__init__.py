"""Triton kernels of MDBiGAN: the fused GRU-with-feedback motion sampler.

    from kernels import gru_feedback, gru_feedback_ref
    python -m kernels.bench        # benchmark against the eager and compiled loops
"""
from .gru_feedback import gru_feedback, gru_feedback_ref

__all__ = ["gru_feedback", "gru_feedback_ref"]
