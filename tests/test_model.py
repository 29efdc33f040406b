"""The MDBiGAN model: shapes, gradients reach every network, determinism, round-trips.

    python -m pytest tests/test_model.py -q
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mdbigan import Config, MDBiGAN

TINY = dict(frames=5, size=16, dim_z_c=8, dim_z_m=4, dim_eps=3, ch=4, ch_max=8, d_hidden=16)


def videos(cfg, B=3, seed=0):
    return torch.rand(B, cfg.frames, 1, cfg.size, cfg.size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [Config(), Config.small(), Config(**TINY)], ids=["paper", "small", "tiny"])
def test_api_shapes(cfg):
    torch.manual_seed(0)
    m = MDBiGAN(cfg).eval()
    x = videos(cfg, B=2)
    with torch.no_grad():
        assert m.encode_motion(x).shape == (2, cfg.frames, cfg.dim_z_m)
        assert m.encode_content(x).shape == (2, cfg.dim_z_c)
        z_c, z_m = m.sample(2)
        assert z_c.shape == (2, cfg.dim_z_c) and z_m.shape == (2, cfg.frames, cfg.dim_z_m)
        v = m.generate(z_c, z_m)
    assert v.shape == (2, cfg.frames, 1, cfg.size, cfg.size)
    assert v.min() >= 0 and v.max() <= 1


@pytest.mark.parametrize("content", [True, False], ids=["content-encoder", "paper-as-written"])
def test_every_parameter_gets_a_gradient(content):
    kw = {} if content else dict(content_encoder=False, recon_weight=0.0)
    cfg = Config(**TINY, r1_gamma=1.0, **kw)
    torch.manual_seed(0)
    m = MDBiGAN(cfg)
    x = videos(cfg)
    d_loss, logs = m.d_loss(x)
    d_loss.backward()
    d_img, d_vid = m.d_parameters()
    assert "r1" in logs
    for p in d_img + d_vid:  # (a score's output bias can get exactly 0 from the hinge: -1 + 1)
        assert p.grad is not None and (p.dim() == 1 or p.grad.abs().sum() > 0)
    for p in m.eg_parameters():       # the D step leaves E, E_C, G and the sampler alone
        assert p.grad is None
    m.zero_grad(set_to_none=True)
    g_loss, _ = m.eg_loss(x)
    g_loss.backward()
    names = {id(p): n for n, p in m.named_parameters()}
    for p in m.eg_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, names[id(p)]
    assert (m.enc_c is None) == (not content)


def test_fake_frames_for_d_image_come_from_all_steps():
    cfg = Config(**TINY, image_frames=2)
    m = MDBiGAN(cfg)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        _, _, t_idx = m._pairs(videos(cfg))
        seen |= set(t_idx.flatten().tolist())
    assert seen == set(range(cfg.frames))


def test_seeded_determinism_and_state_dict_roundtrip():
    cfg = Config(**TINY)
    out = []
    for _ in range(2):
        torch.manual_seed(7)
        m = MDBiGAN(cfg)
        torch.manual_seed(1)
        out.append((m.d_loss(videos(cfg))[0].item(), m.eg_loss(videos(cfg))[0].item()))
    assert out[0] == out[1]
    m2 = MDBiGAN(Config.from_dict(dict(m.cfg.__dict__)))
    m2.load_state_dict(m.state_dict())
    m.eval(), m2.eval()
    x = videos(cfg)
    assert torch.equal(m.encode_motion(x), m2.encode_motion(x))


def test_sampler_same_through_both_kernel_backends():
    import kernels  # noqa: F401  (the interpreter is set up by conftest)
    cfg = Config(**TINY)
    m = MDBiGAN(cfg)
    eps = torch.randn(6, cfg.dim_eps)
    m.sampler.cfg.sampler_backend = "torch"
    a = m.sampler(eps, cfg.frames)
    m.sampler.cfg.sampler_backend = "triton"
    b = m.sampler(eps, cfg.frames)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_configs():
    m = MDBiGAN(Config(**TINY))
    with pytest.raises(ValueError, match=r"videos must be \[B, 5, 1, 16, 16\]"):
        m.encode_motion(torch.rand(2, 5, 16, 16))
    with pytest.raises(ValueError, match="power of two"):
        Config(size=48).validate()
    with pytest.raises(ValueError, match="unknown Config fields"):
        Config.from_dict({"frames": 3, "bogus": 1})
    with pytest.raises(ValueError, match="content_encoder"):
        Config(content_encoder=False).validate()


def test_works_copied_alone(tmp_path):
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "mdbigan.py"), tmp_path)
    code = ("import torch, mdbigan\n"
            "m = mdbigan.MDBiGAN(mdbigan.Config(frames=3, size=16, ch=4, ch_max=8, d_hidden=8))\n"
            "v = m.generate(*m.sample(2)); l, _ = m.eg_loss(v.detach()); l.backward()\n"
            "print(tuple(v.shape))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(2, 3, 1, 16, 16)" in r.stdout
