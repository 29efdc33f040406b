"""The MDBiGAN model: shapes, gradients reach every network, determinism, round-trips.

    python -m pytest tests/test_model.py -q
"""
import dataclasses
from dataclasses import replace
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL, TINY, run_copied_alone
import mdbigan
from mdbigan import Config, MDBiGAN, gru_feedback_torch


def videos(cfg, B=3, seed=0):
    return torch.rand(B, cfg.frames, cfg.channels, cfg.size, cfg.size,
                      generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [Config(), replace(SMALL, structured=False), TINY, SMALL,
                                 replace(TINY, sampler_hidden=7, structured=True),
                                 replace(TINY, warp=True, flow_size=3)],
                         ids=["paper", "small", "tiny", "small-structured", "tiny-structured", "tiny-warp"])
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


@pytest.mark.parametrize("kw", [
    pytest.param({}, id="conv"),
    pytest.param(dict(loss="bce", recon_weight=0.0), id="bce"),
    pytest.param(dict(structured=True, sampler_hidden=6, prior_weight=1.0), id="structured"),
    pytest.param(dict(warp=True, motion_noise=0.05, swap_weight=1.0), id="warp"),
    pytest.param(dict(warp=True, pose_picture=True, content_ch=6, recon_scales=2, independence_weight=1.0,
                      colour_jitter=0.9), id="pose-picture"),
    pytest.param(dict(channels=3, swap_weight=1.0, swap_trains_g=True, content_swap_weight=1.0,
                      decorrelate_weight=1.0, colour_jitter=0.5, swap_g_weight=1.0, independence_weight=1.0),
                 id="swaps"),
])
def test_every_parameter_gets_a_gradient(kw):
    cfg = replace(TINY, **kw)
    torch.manual_seed(0)
    m = MDBiGAN(cfg)
    x = videos(cfg)
    d_loss, logs = m.d_loss(x)
    d_loss.backward()
    for p in m.d_parameters():  # (a score's output bias can get exactly 0 from the hinge: -1 + 1)
        assert p.grad is not None and (p.dim() == 1 or p.grad.abs().sum() > 0)
    for p in m.eg_parameters():       # the D step leaves E, E_C, G and the sampler alone
        assert p.grad is None
    m.zero_grad(set_to_none=True)
    g_loss, _ = m.eg_loss(x)
    g_loss.backward()
    names = {id(p): n for n, p in m.named_parameters()}
    for p in m.eg_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, names[id(p)]


def test_structured_place_and_glimpse_are_inverse():
    """A canvas placed at a pose on the pixel grid and glimpsed at the same pose comes back."""
    from mdbigan import GLIMPSE, glimpse, place
    S = 32
    c = round(GLIMPSE * S)
    canvas = torch.rand(2, 1, c, c, generator=torch.Generator().manual_seed(0))
    canvas[..., 0, :] = canvas[..., -1, :] = canvas[..., :, 0] = canvas[..., :, -1] = 0
    pose = torch.tensor([[3.0, -5.0], [0.0, 2.0]]) * 2 / S     # whole pixels
    frames = place(canvas, pose, S)
    assert frames.shape == (2, 1, S, S)
    torch.testing.assert_close((glimpse(frames * 2 - 1, pose, c) + 1) / 2, canvas, atol=1e-5, rtol=0)
    # and the ink lands where the pose says: 3 px right and 5 px up of the frame's centre
    ys, xs = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    com = lambda im, w: (im * w).sum() / im.sum()
    canvas_com = [com(canvas[0, 0], g) * S / c * 0.625 + (S - 0.625 * S) / 2
                  for g in torch.meshgrid(torch.arange(c) + 0.5, torch.arange(c) + 0.5, indexing="ij")]
    assert abs(com(frames[0, 0], xs) - canvas_com[1] - 3) < 0.05
    assert abs(com(frames[0, 0], ys) - canvas_com[0] + 5) < 0.05


@pytest.mark.parametrize("S", [16, 32, 64])
def test_crisp_rendering_copies_canvas_pixels(S):
    """At any pose, each frame holds the canvas's own pixel values (no sub-pixel
    blur) on a black background (float rounding in grid_sample leaves ~1e-7 beside the ink),
    and gradients still reach the pose and the canvas."""
    from mdbigan import INK, CanvasGenerator, PoseMap
    torch.manual_seed(0)
    cfg = Config(size=S, frames=3, dim_z_c=8, ch=4, ch_max=8, structured=True)
    gen = CanvasGenerator(cfg, PoseMap(cfg))         # PoseMap starts as pose = z_M[:2]
    with torch.no_grad():                            # a canvas with ink, not all background
        gen.draw.net[-2].bias.fill_(0.0)
    z_c = torch.randn(2, cfg.dim_z_c)
    z_m = torch.zeros(2, 3, cfg.dim_z_m)
    z_m[..., :2] = (torch.rand(2, 3, 2) - 0.5) * 0.4   # off the pixel grid
    z_m.requires_grad_()
    frames = (gen(z_c, z_m) + 1) / 2
    canvas = gen.draw(z_c).detach()
    for b in range(2):
        ink = canvas[b][canvas[b] > INK].sort().values
        for t in range(3):                           # the canvas fits inside the frame here
            torch.testing.assert_close(frames[b, t][frames[b, t] > 1e-4].sort().values, ink,
                                       atol=1e-5, rtol=0)
    (frames * torch.randn_like(frames)).sum().backward()
    assert z_m.grad[..., :2].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_prior_fit_learns_code_paths():
    """prior_weight: fitting the sampler as a VAE decoder of E's code paths lowers its loss, and
    then paths sampled from N(0, I) stay inside the range of the training paths (|z| <= 0.5)."""
    torch.manual_seed(0)
    cfg = replace(TINY, frames=8, structured=True, prior_weight=1.0,
                 sampler_hidden=16)   # (with the state = the code, paths cannot cross)
    m = MDBiGAN(cfg)
    t = torch.linspace(0, 1, cfg.frames)[None, :, None]
    start = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
    paths = torch.cat([(start[:, None] * (1 - 2 * t)).repeat(8, 1, 1)] * 2, 2)   # 4 lines via 0
    paths = paths + 0.01 * torch.randn_like(paths)
    opt = torch.optim.Adam(list(m.sampler.parameters()) + list(m.prior_enc.parameters()), 3e-3)
    losses = []
    for _ in range(300):
        loss = m.prior_fit(paths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.1 * sum(losses[:20]) / 20, (losses[:3], losses[-3:])
    with torch.no_grad():
        z = m.sample(256)[1]
    assert z.abs().max() < 0.75, z.abs().max()


def test_prior_learns_from_its_fit_alone():
    """With prior_weight, no other E/G term sends a gradient into the sampler."""
    torch.manual_seed(0)
    m = MDBiGAN(replace(TINY, structured=True, prior_weight=1.0, sampler_hidden=6))
    m.prior_fit = lambda path: path.sum() * 0.0                 # the fit's own gradient removed
    m.eg_loss(videos(m.cfg))[0].backward()
    assert all(p.grad is None or not p.grad.any() for p in m.sampler.parameters())


@pytest.mark.parametrize("S", [32, 64])
def test_generated_digits_stay_where_real_ones_can(S):
    """However far z_M points, the drawn ink's centre of mass stays inside the range of a real
    digit's box centre (data.py clips the box to the frame; MNIST digits are centred on theirs)."""
    from mdbigan import CanvasGenerator, PoseMap
    from data import digit_size as d_size
    torch.manual_seed(0)
    cfg = Config(size=S, frames=6, dim_z_c=8, ch=4, ch_max=8, structured=True)
    gen = CanvasGenerator(cfg, PoseMap(cfg))
    c = round(0.625 * S)
    canvas = torch.zeros(4, 1, c, c)                  # digit-sized ink, off the canvas centre
    canvas[:, :, c // 4: c // 4 + d_size(S) - 2, c // 3: c // 3 + d_size(S) - 4] = 1.0

    class Fixed(torch.nn.Module):
        def forward(self, z_c):
            return canvas

    gen.draw = Fixed()
    with torch.no_grad():
        frames = (gen(torch.randn(4, 8), torch.randn(4, 6, cfg.dim_z_m) * 3) + 1) / 2
    w = frames[:, :, 0] * (frames[:, :, 0] > 1e-4)
    idx = torch.arange(S, dtype=torch.float32)
    com = torch.stack([(w.sum(2) * idx).sum(2), (w.sum(3) * idx).sum(2)], -1) / w.sum((2, 3))[..., None]
    d = d_size(S)
    assert com.min() >= (d - 1) / 2 - 1e-3 and com.max() <= S - 1 - (d - 1) / 2 + 1e-3, com
    assert com.min() < (d - 1) / 2 + 1 and com.max() > S - 1 - (d - 1) / 2 - 1   # the limits are reached


def test_canvas_offset_in_frame_pixels():
    from mdbigan import GLIMPSE, canvas_offset
    S = 32
    c = round(GLIMPSE * S)                          # 20 canvas pixels = 20 frame pixels at S = 32
    canvas = torch.zeros(2, 1, c, c)
    canvas[0, 0, c // 2, c // 2 + 3] = 1           # pixel centre 3.5 px right, 0.5 px down
    canvas[1, 0, :, :] = 1                          # uniform: centred
    torch.testing.assert_close(canvas_offset(canvas, S), torch.tensor([[3.5, 0.5], [0.0, 0.0]]),
                               atol=1e-4, rtol=0)


def test_anchor_measures_where_e_looks_against_the_ink_in_frame_pixels():
    """E.penalties: (pose of z_M - the frame's ink centre of mass)^2 in frame pixels, the ink being
    what lies above INK (the faint halo does not move the centre)."""
    S = 32
    m = MDBiGAN(replace(SMALL, frames=2, anchor_weight=1.0))
    x = torch.full((1, 2, 1, S, S), -1.0)                        # black, in [-1, 1]
    x[0, :, 0, 10, 20] = 1.0                                     # ink centred at pixel (20, 10)
    x[0, :, 0, 0, 0] = -1 + 2 * 0.2                              # a faint speck: not ink
    ink = (torch.tensor([20.5, 10.5]) - S / 2) / (S / 2)         # pose units: centres at (2i+1)/S - 1
    z_m = torch.zeros(1, 2, SMALL.dim_z_m)
    z_m[0, 0, :2] = ink                                          # PoseMap starts as the identity
    z_m[0, 1, :2] = ink + torch.tensor([3.0, 4.0]) / (S / 2)    # 5 px off
    torch.testing.assert_close(m.enc.penalties(x, z_m)["anchor"], torch.tensor(25.0 / 2), atol=1e-4, rtol=0)


def test_a_dim_hue_shows_as_much_ink_as_grey():
    """shown(): a pixel is ink when its brightest channel is over INK, so a blue digit (luminance
    0.29 at full ink) keeps the same pixels as the grey digit it was drawn from, and its ink's
    centre is the grey one's."""
    from mdbigan import INK, ink, ink_offset, shown
    torch.manual_seed(0)
    grey = torch.rand(2, 1, 12, 12) * (torch.rand(2, 1, 12, 12) > 0.5)
    blue = grey * torch.tensor([0.2, 0.2, 1.0])[:, None, None]
    assert torch.equal(shown(blue).amax(1, keepdim=True) > 0, shown(grey) > 0)
    assert torch.equal(shown(grey), grey * (grey > INK))        # grey: unchanged
    torch.testing.assert_close(ink_offset(ink(blue)), ink_offset(ink(grey)))


def test_e_starts_out_looking_at_a_blue_digit():
    """E's heatmap starts from the frame's brightest channel, so at initialisation (its conv net
    silenced) E's pose lands on a blue blob as on a white one, not pulled to the frame's centre."""
    from mdbigan import PoseMap, WhereEncoder
    S = 32
    cfg = Config(size=S, frames=1, ch=4, ch_max=8, structured=True, channels=3)
    enc = WhereEncoder(cfg, PoseMap(cfg))
    with torch.no_grad():
        enc.net[-1].weight.zero_(), enc.net[-1].bias.zero_()
    frame = torch.zeros(1, 1, 3, S, S)
    frame[..., 2:8, 2:8] = 1.0                                   # a 6x6 blob, centre (5, 5)
    blob = (torch.tensor([5.0, 5.0]) - S / 2) / (S / 2)          # pose units
    for hue in ([1.0, 1.0, 1.0], [0.2, 0.2, 1.0]):
        x = frame * torch.tensor(hue)[:, None, None] * 2 - 1
        p = torch.atanh(enc(x)[0, 0, :2])                        # lift starts as the identity
        assert (p - blob).abs().max() * S / 2 < 1.0, (hue, p)   # within a pixel


def test_colour_canvas_is_one_ink_map_in_one_colour():
    """In colour, G's canvas is its ink map times one colour per video, scaled so that the
    brightest channel is the ink map itself: every pixel of a canvas has one hue, and the pixels
    shown() keeps are the ink map's, in any colour."""
    from mdbigan import INK, CanvasGenerator, PoseMap, shown
    torch.manual_seed(0)
    cfg = Config(size=32, frames=2, dim_z_c=8, ch=4, ch_max=8, structured=True, channels=3)
    gen = CanvasGenerator(cfg, PoseMap(cfg))
    with torch.no_grad():                             # ink and strong colours, not a black start
        gen.draw.net[-2].bias.fill_(0.0)
        gen.paint.weight.mul_(20)
    z_c = torch.randn(4, cfg.dim_z_c)
    canvas, ink = gen.canvases(z_c), gen.draw(z_c)
    assert canvas.shape == (4, 3, 20, 20) and ink.shape == (4, 1, 20, 20)
    torch.testing.assert_close(canvas.amax(1, keepdim=True), ink)
    chroma = canvas / ink                                   # (4, 3, c, c): the same at every pixel
    torch.testing.assert_close(chroma, chroma[..., :1, :1].expand_as(chroma))
    assert (chroma[:, :, 0, 0].std(0) > 0.1).any()          # and not the same for every video
    assert torch.equal(shown(canvas).amax(1, keepdim=True) > 0, ink > INK)
    frames = gen(z_c, torch.zeros(4, 2, cfg.dim_z_m))
    assert frames.shape == (4, 2, 3, 32, 32)


def test_reconstruction_weighs_a_colour_pixel_as_a_grey_one():
    """The reconstruction error is per pixel, summed over channels: a red digit missed entirely
    costs what the same grey digit missed costs."""
    torch.manual_seed(0)
    cfg = Config(size=16, frames=2, dim_z_c=8, dim_z_m=4, dim_eps=4, ch=4, ch_max=8, d_hidden=16)
    shape = (torch.rand(2, 2, 1, 16, 16) > 0.7).float() * 2 - 1
    err = {}
    red = torch.cat([shape, -torch.ones(2, 2, 2, 16, 16)], 2)   # ink in R only, G and B black
    for name, x in (("grey", shape), ("red", red)):
        m = MDBiGAN(replace(cfg, channels=x.shape[2]))
        m.gen.reconstruct = lambda z_c, z_m, x=x: (-torch.ones_like(x), {})   # black frames
        err[name] = m._reconstruction(x, m.enc(x), torch.zeros(2, 8))["rec"][1]
    torch.testing.assert_close(err["red"], err["grey"])


def test_structured_motion_code_is_a_two_number_bottleneck():
    """Whatever the frames hold, E's z_M(t) = tanh(W p + b) with p in R^2: atanh(z_M) - b spans
    at most 2 dimensions, so z_M can carry where the digit is but not which digit it is."""
    torch.manual_seed(0)
    cfg = SMALL
    m = MDBiGAN(cfg)
    with torch.no_grad():
        for p in m.enc.lift.parameters():     # away from the [I; 0] start: a generic W (small
            p.normal_(std=0.1)                # enough that tanh does not saturate)
        z = m.encode_motion(videos(cfg, B=8)).flatten(0, 1).double()
    u = torch.atanh(z.clamp(-1 + 1e-7, 1 - 1e-7)) - m.enc.lift.bias.double()
    sv = torch.linalg.svdvals(u)
    assert sv[1] > 1e-3 * sv[0] and sv[2] < 1e-6 * sv[0], sv[:4]


def _warp_gen(n=4, S=16, C=1, seed=0):
    torch.manual_seed(seed)
    return mdbigan.WarpGenerator(replace(TINY, size=S, channels=C, warp=True, flow_size=n))


def _set_flow(gen, field):
    """Makes gen's flow the constant field (2, n, n), whatever z_M: the last layer's bias."""
    with torch.no_grad():
        gen.flow[-1].weight.zero_()
        gen.flow[-1].bias.copy_(field.flatten())


def test_warp_without_flow_shows_the_picture():
    """With no flow, the warp G shows its picture unchanged in every frame (colour too)."""
    gen = _warp_gen(C=3)
    _set_flow(gen, torch.zeros(2, 4, 4))
    z_c, z_m = torch.randn(2, TINY.dim_z_c), torch.randn(2, 5, TINY.dim_z_m)
    frames = gen(z_c, z_m)
    assert frames.shape == (2, 5, 3, 16, 16)
    torch.testing.assert_close(frames, gen.pictures(z_c)[:, None].expand_as(frames), atol=1e-5, rtol=0)


def test_warp_shift_moves_the_picture_by_whole_pixels_on_black():
    """A constant flow of 3 px moves the picture 3 px; what comes in from outside is black (-1)."""
    gen, S = _warp_gen(), 16
    _set_flow(gen, torch.stack([torch.full((4, 4), 3 * 2 / S), torch.zeros(4, 4)]))   # x: 3 px
    z_c = torch.randn(1, TINY.dim_z_c)
    pic, frame = gen.pictures(z_c)[0, 0], gen(z_c, torch.zeros(1, 1, TINY.dim_z_m))[0, 0, 0]
    # frame(x) = picture(x + 3): the picture moves 3 px to the left
    torch.testing.assert_close(frame[:, :S - 3], pic[:, 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(frame[:, S - 3:], torch.full((S, 3), -1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [2, 4])
def test_warp_spreads_a_turn_and_zoom_exactly(n):
    """n x n flow vectors of a linear field (a turn by 30 degrees and a zoom by 1.3) give exactly
    F.affine_grid's grid of that map at every pixel: turns and zooms need no more of z_M than a
    shift does."""
    gen, S = _warp_gen(n=n), 16
    a, s = torch.tensor(30.0).deg2rad(), 1.3
    A = s * torch.tensor([[a.cos(), -a.sin()], [a.sin(), a.cos()]])
    u = torch.linspace(-1, 1, n) * (1 - 1 / S)                  # on the corner pixels' centres
    pts = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1)  # (n, n, 2) as (x, y)
    _set_flow(gen, (pts @ A.T - pts).permute(2, 0, 1))
    got = gen.sampling_grid(torch.zeros(1, TINY.dim_z_m))
    theta = torch.cat([A, torch.zeros(2, 1)], 1)[None]
    want = F.affine_grid(theta, (1, 1, S, S), align_corners=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_pose_picture_starts_as_the_content_picture_and_then_reads_each_frames_code():
    """With pose_picture, G draws one picture per frame from (z_C, z_M(t)): at initialisation its z_M
    weights are 0, so every frame's picture is the one z_C alone gives; once they are not, frames
    with the same z_M get the same picture and frames with another z_M another one, and a frame's
    picture does not depend on any other frame's code (long videos work frame by frame)."""
    cfg = replace(TINY, warp=True, pose_picture=True, channels=3)
    torch.manual_seed(0)
    gen = mdbigan.WarpGenerator(cfg)
    z_c, z_m = torch.randn(2, cfg.dim_z_c), torch.randn(2, 5, cfg.dim_z_m)
    pics = gen.pictures(z_c, z_m)
    assert pics.shape == (2, 5, 3, cfg.size, cfg.size)
    torch.testing.assert_close(pics, pics[:, :1].expand_as(pics), atol=1e-6, rtol=0)
    with torch.no_grad():
        gen.draw.fc.weight.normal_()
    z_m[:, 3] = z_m[:, 1]
    pics = gen.pictures(z_c, z_m)
    torch.testing.assert_close(pics[:, 3], pics[:, 1], atol=1e-6, rtol=0)
    assert (pics[:, 2] - pics[:, 1]).abs().amax() > 1e-3
    torch.testing.assert_close(gen.pictures(z_c, z_m[:, 2:3])[:, 0], pics[:, 2], atol=1e-5, rtol=0)
    _set_flow(gen, torch.zeros(2, cfg.flow_size, cfg.flow_size))
    torch.testing.assert_close(gen(z_c, z_m), pics, atol=1e-5, rtol=0)   # no flow: the pictures


def test_content_ch_widens_the_content_path_alone():
    """content_ch sets E_C's and G's channels (and their cap, scaled alike); E and the
    discriminators keep ch."""
    wide = MDBiGAN(replace(TINY, warp=True, content_ch=2 * TINY.ch))
    base = MDBiGAN(replace(TINY, warp=True))
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    assert count(wide.gen) > count(base.gen) and count(wide.enc_c) > count(base.enc_c)
    for name in ("enc", "disc_image", "disc_video"):
        assert count(getattr(wide, name)) == count(getattr(base, name))
    assert wide.gen.draw.net[2].out_channels == 2 * base.gen.draw.net[2].out_channels


def test_multiscale_reconstruction_adds_the_coarse_scales_errors():
    """recon_scales = k adds, to the pixels' squared error, that of the frames average-pooled 2x,
    4x, ... (k - 1 of them); a shift that leaves thin strokes apart at full scale costs more at
    k = 3 than at k = 1 only through the coarse terms, which are smooth in the shift."""
    cfg = replace(TINY, warp=True, recon_scales=3)
    torch.manual_seed(0)
    m = MDBiGAN(cfg)
    x = videos(cfg, B=2) * 2 - 1
    z_m, z_c = m.enc(x), m.enc_c(x, m.enc(x))
    rec = m._reconstruction(x, z_m, z_c)["rec"][1]
    x_rec = m.gen(z_c, z_m)
    a, b = x_rec.flatten(0, 1), x.flatten(0, 1)
    want = (a - b).pow(2).sum(1).mean()
    for _ in range(2):
        a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        want = want + (a - b).pow(2).sum(1).mean()
    torch.testing.assert_close(rec, want)
    with pytest.raises(ValueError, match="recon_scales"):
        replace(TINY, recon_scales=4).validate()                 # 16x16 -> 4x4 is 3 scales


def test_centred_motion_code_holds_nothing_constant_over_a_video():
    """With centre_motion, E's code before the tanh has mean 0 over each video, and a video whose
    frames are all the same (whatever they show) has z_M = 0 at every frame."""
    cfg = replace(TINY, centre_motion=True, frames=6)
    torch.manual_seed(0)
    m = MDBiGAN(cfg).eval()
    with torch.no_grad():
        z = m.encode_motion(videos(cfg, B=4))
        still = m.encode_motion(videos(cfg, B=4, seed=1)[:, :1].expand(4, cfg.frames, 1, 16, 16))
    assert z.abs().amax() > 1e-3                                # the frames differ: codes do too
    torch.testing.assert_close(torch.atanh(z).mean(1), torch.zeros(4, cfg.dim_z_m), atol=1e-5, rtol=0)
    torch.testing.assert_close(still, torch.zeros_like(still), atol=1e-6, rtol=0)


def test_swap_cycle_trains_e_alone_on_a_swapped_video():
    """The swap term is |E(G(z_C of the next video, z_M)) - z_M| on real codes, and of all the
    networks it trains E alone: G draws the swap without gradients, the codes are its targets."""
    cfg = replace(TINY, warp=True, swap_weight=1.0)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=4)
    z_m, z_c = m.encode_motion(x), m.encode_content(x)
    term, content_term = m._swap_consistency(z_m, z_c)
    assert content_term is None                                  # content_swap_weight = 0
    with torch.no_grad():
        swapped = m.gen(z_c[[3, 0, 1, 2]], z_m)                  # video b's content, a's motion
        expected = (m.enc(swapped) - z_m).abs().mean()
    torch.testing.assert_close(term, expected)
    term.backward()
    grads = {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters()}
    assert all(g for n, g in grads.items() if n.startswith("enc."))
    assert not any(g for n, g in grads.items() if n.startswith(("gen.", "enc_c.")))
    _, logs = m.eg_loss(x)
    assert "swap" in logs and "swap" not in MDBiGAN(replace(cfg, swap_weight=0.0)).eg_loss(x)[1]


def test_content_swap_cycle_trains_e_c_alone_and_ignores_the_code_scale():
    """The content term is |E_C(G(z_C^b, z_M^a)) - z_C^b|^2 over z_C's spread: it trains E_C alone
    (with swap_trains_g, G still gets no gradient from it), and scaling E_C's codes by 10 leaves it
    unchanged, so E_C cannot lower it by shrinking its code."""
    cfg = replace(TINY, swap_weight=1.0, content_swap_weight=1.0, swap_trains_g=True)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=4)
    z_m, z_c = m.encode_motion(x), m.encode_content(x)
    motion_term, term = m._swap_consistency(z_m, z_c)
    with torch.no_grad():
        swapped = m.gen(z_c[[3, 0, 1, 2]], z_m)
        c_hat = m.enc_c(swapped, m.enc(swapped))
        expected = (c_hat - z_c[[3, 0, 1, 2]]).pow(2).mean() / (z_c.var(0).mean() + 1e-6)
    torch.testing.assert_close(term, expected)
    m.zero_grad()
    term.backward(retain_graph=True)
    grads = {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters()}
    assert all(g for n, g in grads.items() if n.startswith("enc_c."))
    assert not any(g for n, g in grads.items() if n.startswith("gen."))
    m.zero_grad()
    motion_term.backward()                                       # swap_trains_g: this one trains G
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.gen.parameters())
    with torch.no_grad():
        m.enc_c.fc.weight.mul_(10), m.enc_c.fc.bias.mul_(10)
        m.gen.net.fc.weight[:, :cfg.dim_z_c].div_(10)            # G reads the same codes as before
        z_c10 = m.encode_content(x)
        torch.testing.assert_close(m._swap_consistency(z_m, z_c10)[1], term.detach(), rtol=1e-2, atol=0)


def test_swap_through_g_trains_g_alone_against_e_as_it_is():
    """swap_g_weight's term is |E(G(z_C^b, z_M^a)) - z_M^a| with E's weights held: G gets every
    gradient, E and E_C none, and its value is the plain swap cycle's."""
    cfg = replace(TINY, swap_g_weight=1.0)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=4)
    z_m, z_c = m.encode_motion(x), m.encode_content(x)
    term = m._swap_through_g(z_m, z_c)
    torch.testing.assert_close(term, m._swap_consistency(z_m, z_c)[0])
    m.zero_grad()
    term.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.gen.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0
               for p in [*m.enc.parameters(), *m.enc_c.parameters()])
    assert "gswap" in m.eg_loss(x)[1]


def test_correlation_term_sees_a_shared_number_and_not_independent_ones():
    """_correlation is the mean squared batch correlation of z_C's numbers with z_M's: about 1/B
    for independent codes, large when a z_C number copies a z_M one, whatever the codes' scales."""
    g = torch.Generator().manual_seed(0)
    z_m = torch.randn(4096, 2, 3, generator=g)
    z_c = torch.randn(4096, 5, generator=g)
    independent = MDBiGAN._correlation(z_m, z_c)
    z_c[:, 0] = z_m[:, 1, 2]
    shared = MDBiGAN._correlation(z_m, z_c)
    assert independent < 3 / 4096 and shared > 1 / 30 - 1e-3   # one pair of 5 x 6 at 1
    torch.testing.assert_close(MDBiGAN._correlation(10 * z_m, 0.1 * z_c), shared, rtol=1e-2, atol=0)


def test_independence_critic_tells_shared_codes_and_trains_e_c_alone():
    """The critic, trained as the D step trains it, tells a video's own (z_C, z_M) from z_C beside
    another video's z_M when z_C copies a number of z_M, and cannot when the codes are independent;
    its term in the E/G loss moves E_C alone (not E, G or the critic)."""
    cfg = replace(TINY, independence_weight=1.0)

    def trained_loss(share):
        torch.manual_seed(0)
        m = MDBiGAN(cfg)
        opt = torch.optim.Adam(m.critic.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            z_m = torch.randn(64, cfg.frames, cfg.dim_z_m, generator=g)
            z_c = torch.randn(64, cfg.dim_z_c, generator=g)
            if share:
                z_c[:, 0] = z_m[:, 1, 2]
            joint, apart = m._critic_scores(z_m, z_c)
            loss = F.softplus(-joint).mean() + F.softplus(apart).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    shared, independent = trained_loss(share=True), trained_loss(share=False)
    assert shared < 0.9 and independent > 1.25, (shared, independent)   # 2 ln 2 = 1.386: chance
    z_m, z_c = torch.randn(16, cfg.frames, cfg.dim_z_m), torch.randn(16, cfg.dim_z_c)
    torch.manual_seed(0)
    m = MDBiGAN(cfg)
    for a, b in zip(m._critic_scores(z_m, z_c), m._critic_scores(z_m, 0.1 * z_c + 3)):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # E_C cannot hide by shrinking z_C
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=4)
    _, logs = m.eg_loss(x)
    assert "indep" in logs and "crit" in m.d_loss(x)[1]
    z_m, z_c = m.encode_motion(x), m.encode_content(x)
    joint, apart = m._critic_scores(z_m.detach(), z_c)
    (F.softplus(joint).mean() + F.softplus(-apart).mean()).backward()
    moved = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    assert moved(m.enc_c) and not moved(m.enc) and not moved(m.gen)
    assert "critic.0.weight" not in m.inference_state_dict()


def test_dependence_term_sees_a_linear_read_of_the_motion_and_trains_e_c_alone():
    """_dependence (CKA, linear kernel on z_C, Gaussian on z_M) is near 0 for independent codes
    and large when a z_C number is a nonlinear function of z_M, whatever z_C's scale; its term in
    the E/G loss moves E_C alone."""
    g = torch.Generator().manual_seed(0)
    z_m = torch.randn(256, 2, 3, generator=g)
    z_c = torch.randn(256, 5, generator=g)
    independent = MDBiGAN._dependence(z_m, z_c)
    z_c[:, 0] = (z_m[:, 0, 0] > 0).float()          # the sign of a motion number: a class
    shared = MDBiGAN._dependence(z_m, z_c)
    assert independent < 0.05 and shared > 3 * independent, (independent, shared)
    torch.testing.assert_close(MDBiGAN._dependence(z_m, 0.1 * z_c + 3), shared, rtol=1e-3, atol=1e-4)
    cfg = replace(TINY, dependence_weight=1.0)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=4)
    assert "dep" in m.eg_loss(x)[1]
    m._dependence(m.encode_motion(x).detach(), m.encode_content(x)).backward()
    moved = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    assert moved(m.enc_c) and not moved(m.enc) and not moved(m.gen)


def test_whitened_dependence_memory_sees_a_narrow_direction_and_trains_e_c_alone():
    """dependence_memory: over a few hundred batches of 16, a shift of z_C by the sign of a motion
    number in a narrow direction of z_C (under 1 % of its variance, which a linear probe reads) is
    seen several times over the measure's floor for independent codes; the running moments move
    in training only, in fp32 under bf16 autocast, and are not saved; the term moves E_C alone, along the gradient of the
    measure over many batches."""
    cfg = replace(TINY, frames=2, dim_z_m=3, dim_z_c=5, dependence_weight=1.0, dependence_memory=0.99)
    torch.manual_seed(0)
    m = MDBiGAN(cfg).train()
    g = torch.Generator().manual_seed(0)

    def measure(shift, batches=400):
        m.dependence.cov.copy_(torch.eye(5))
        m.dependence.cross.zero_()
        for _ in range(batches):
            z_m, z_c = torch.randn(16, 2, 3, generator=g), torch.randn(16, 5, generator=g)
            z_c[:, 1] = z_c[:, 0] + 0.1 * z_c[:, 1] + shift * (z_m[:, 0, 0] > 0).float()
            value = m.dependence(z_c, z_m.flatten(1))
        return value.item(), z_m, z_c

    floor, shared = measure(0.0)[0], measure(0.2)[0]
    assert shared > 3 * floor, (floor, shared)
    assert not [k for k in m.state_dict() if k.startswith("dependence")]
    m.eval()
    before = m.dependence.cross.clone()
    z_c, z_m = torch.randn(16, 5), torch.randn(16, 6)
    m.dependence(z_c, z_m)
    assert torch.equal(m.dependence.cross, before)
    m.train()               # CUDA training's autocast: the moments stay fp32 inside
    saved = {k: v.clone() for k, v in m.dependence.named_buffers()}
    m.dependence(z_c, z_m)
    want = m.dependence.cov.clone()
    for k, v in m.dependence.named_buffers():
        v.copy_(saved[k])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.dependence(z_c, z_m)
    torch.testing.assert_close(m.dependence.cov, want, rtol=1e-6, atol=1e-7)
    # E_C alone, on real videos; then a code that follows the gradient reads less of the motion
    x = videos(cfg, B=4)
    assert "dep" in m.eg_loss(x)[1]
    m.zero_grad()
    m.dependence(m.encode_content(x), m.encode_motion(x).flatten(1)).backward()
    moved = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    assert moved(m.enc_c) and not moved(m.enc) and not moved(m.gen)
    # its gradient: that of the measure over the running moments with this batch's taken in, / (1 - d)
    _, z_m, z_c = measure(0.3)
    old = m.dependence.cov.clone(), m.dependence.cross.clone(), m.dependence.fvar.clone()
    z_c = z_c.clone().requires_grad_()
    (got,) = torch.autograd.grad(m.dependence(z_c, z_m.flatten(1)), z_c)
    a, d = MDBiGAN._standard(z_c), cfg.dependence_memory
    f = (2 / 256) ** 0.5 * torch.cos(MDBiGAN._standard(z_m.flatten(1)) @ m.dependence.w + m.dependence.b)
    f = f - f.mean(0)
    cov, cross = d * old[0] + (1 - d) * a.T @ a / 16, d * old[1] + (1 - d) * a.T @ f / 16
    exact = (cross * torch.linalg.solve(cov + 1e-3 * torch.eye(5), cross)).sum() / m.dependence.fvar
    (want,) = torch.autograd.grad(exact, z_c)
    torch.testing.assert_close(got * (1 - d), want, rtol=1e-3, atol=1e-7)
    assert torch.allclose(m.dependence.fvar, d * old[2] + (1 - d) * f.pow(2).sum() / 16)


def test_leak_measure_trains_e_alone_and_needs_the_memory():
    """leak_weight: the same whitened measure of z_C read from E's code; its term moves E alone
    (z_C detached), and without dependence_memory's decay the config is refused."""
    cfg = replace(TINY, dependence_weight=1.0, dependence_memory=0.99, leak_weight=1.0)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg).train(), videos(cfg, B=4)
    assert "leak" in m.eg_loss(x)[1]
    m.zero_grad()
    m.leak(m.encode_motion(x).flatten(1), m.encode_content(x)).backward()
    moved = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    assert moved(m.enc) and not moved(m.enc_c) and not moved(m.gen)
    with pytest.raises(ValueError, match="leak_weight needs dependence_memory"):
        replace(TINY, leak_weight=1.0).validate()


def test_critic_on_swapped_codes_leaves_out_the_pairs_that_share_a_look():
    """With independence_codes = "swap", the critic pairs z_C^a with E's reading of G(z_C^(a-1),
    z_M^a): the apart pairs leave out z_C^(a-1) beside it (the look it was drawn with), and the
    D and E/G steps run."""
    cfg = replace(TINY, independence_weight=1.0, independence_codes="swap")
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=5)
    z_m, z_c = torch.randn(5, cfg.frames, cfg.dim_z_m), torch.randn(5, cfg.dim_z_c)
    joint, apart = m._critic_scores(z_m, z_c)
    assert joint.shape == (5,) and apart.shape == (5 * 3,)
    critic = m.critic           # a stand-in that scores 10 b + a for z_C^b beside z_M^a
    z_c[:, 0], z_m[:, 0, 0] = torch.arange(5.0), torch.arange(5.0)
    u = lambda i: (i - 2) / 2 ** 0.5                            # arange(5) standardised
    class Stand(torch.nn.Module):
        def forward(self, pairs):
            return 10 * pairs[..., :1] + pairs[..., cfg.dim_z_c:cfg.dim_z_c + 1]
    m.critic = Stand()
    _, apart = m._critic_scores(z_m, z_c)
    got = {(b, a) for v in apart.tolist() for b in range(5) for a in range(5)
           if abs(v - 10 * u(b) - u(a)) < 0.05}
    assert got == {(b, a) for b in range(5) for a in range(5) if b != a and b != (a - 1) % 5}
    m.critic = critic
    with torch.no_grad():       # what the critic pairs with z_C^a: E's reading of G(z_C^(a-1), z_M^a)
        z_m, z_c = m.encode_motion(x), m.encode_content(x)
        torch.testing.assert_close(m._critic_motion(z_m, z_c), m.enc(m.gen(z_c.roll(1, 0), z_m)))
    assert "crit" in m.d_loss(x)[1] and "indep" in m.eg_loss(x)[1]
    with pytest.raises(ValueError, match="independence_codes"):
        replace(TINY, independence_codes="other").validate()


def test_colour_jitter_shuffles_and_scales_channels_and_keeps_black():
    """E's training input: each video's channels permuted and scaled by one gain each in
    [1 - j, 1 + j]; black (-1) stays black, and each output channel is a scaled input channel."""
    cfg = replace(TINY, channels=3, colour_jitter=0.5)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=8) * 0.5 * 2 - 1          # in [-1, 0]: no clamping
    x[:, :, :, 0, 0] = -1
    y = m._jitter(x)
    assert y.shape == x.shape and (y[:, :, :, 0, 0] == -1).all()
    for b in range(8):
        for c in range(3):
            keep = (x[b] > -0.9).all(1)                          # fp32 ratios of near-black are noise
            ratios = [((y[b, :, c] + 1) / (x[b, :, k] + 1))[keep] for k in range(3)]
            match = [r for r in ratios if torch.allclose(r, r[0].expand_as(r), rtol=1e-4)]
            assert len(match) == 1 and 0.5 - 1e-6 <= match[0][0] <= 1.5 + 1e-6


def test_swap_cycle_warms_up_with_the_adversarial_terms():
    """The swap term, which pulls E's codes toward what G already draws, counts for nothing at step
    0 of the warm-up and fully after it: the loss with it equals the loss without it at step 0."""
    cfg = replace(TINY, warp=True, swap_weight=1.0, adv_warmup=10)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg)
    off = MDBiGAN(replace(cfg, swap_weight=0.0))
    off.load_state_dict(m.state_dict())

    def loss(model, iteration):
        torch.manual_seed(1)                                     # the same draws each time
        return model.eg_loss(x, iteration)

    (on0, logs), (off0, _) = loss(m, 0), loss(off, 0)
    assert logs["swap"] > 0
    torch.testing.assert_close(on0, off0)
    (on10, logs10), (off10, _) = loss(m, 10), loss(off, 10)
    torch.testing.assert_close(on10 - off10, logs10["swap"], rtol=1e-3, atol=1e-5)


def test_content_from_the_middle_frame_reads_that_frame_alone():
    """With content_frame="middle", z_C depends on the middle frame only: the others may change."""
    cfg = replace(TINY, frames=5, content_frame="middle")
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg).eval(), videos(cfg)
    y = videos(cfg, seed=1)
    y[:, 2] = x[:, 2]
    with torch.no_grad():
        torch.testing.assert_close(m.encode_content(x), m.encode_content(y))
        y[:, 2] = 1 - y[:, 2]
        assert not torch.allclose(m.encode_content(x), m.encode_content(y))


def test_colour_mix_blends_the_channels_and_keeps_black():
    """With colour_mix, E's training input is each video's frames with every channel a blend of
    all three (weights >= 0 summing to 1, the same for every pixel and frame of a video) times a
    gain; black stays black."""
    cfg = replace(TINY, channels=3, colour_jitter=0.5, colour_mix=True)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg, B=6) * 0.5 * 2 - 1          # in [-1, 0]: no clamping
    x[:, :, :, 0, 0] = -1
    y = m._jitter(x)
    assert y.shape == x.shape and (y[:, :, :, 0, 0] == -1).all()
    for b in range(6):           # y + 1 = A (x + 1) per pixel: least squares recovers A
        a = (x[b] + 1).permute(1, 0, 2, 3).flatten(1).T          # (pixels, 3)
        c = (y[b] + 1).permute(1, 0, 2, 3).flatten(1).T
        A = torch.linalg.lstsq(a, c).solution.T                  # (3, 3)
        torch.testing.assert_close(a @ A.T, c, atol=1e-4, rtol=0)
        gain = A.sum(1)
        assert (A > -1e-4).all() and ((gain > 0.5 - 1e-4) & (gain < 1.5 + 1e-4)).all()


def test_adversarial_weight_warms_up_over_its_steps():
    """With adv_warmup = 10 the E/G loss at step 0 is the loss without the adversarial terms, at
    step 5 it holds half their weight, from step 10 all of it; no step given: all of it."""
    cfg = replace(TINY, adv_weight=0.5, adv_warmup=10)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg)

    def loss(iteration):
        torch.manual_seed(1)                                     # the same prior draws each time
        total, logs = m.eg_loss(x, iteration)
        return total, logs["g"]

    (l0, g), (l5, _), (l10, _), (l99, _), (lnone, _) = map(loss, (0, 5, 10, 99, None))
    assert g.abs() > 0
    close = dict(rtol=1e-3, atol=1e-4)                          # differences of sums of terms
    torch.testing.assert_close(l5 - l0, 0.5 * 0.5 * g, **close)
    torch.testing.assert_close(l10 - l0, 0.5 * g, **close)
    torch.testing.assert_close(l99, l10, **close)
    torch.testing.assert_close(lnone, l10, **close)


def test_reconstruction_spreads_from_the_middle_frame_over_its_warmup():
    """With recon_warmup = 10 the reconstruction term at step 0 is the frames' errors weighed by a
    narrow Gaussian about the middle frame (the outer frames count for nothing), widening with the
    steps; from step 10, or with no step given, the plain mean over every frame."""
    cfg = replace(TINY, frames=9, recon_warmup=10)
    torch.manual_seed(0)
    m, x = MDBiGAN(cfg), videos(cfg)
    w0, w5 = m.frame_weights(0, 9), m.frame_weights(5, 9)
    for w in (w0, w5):
        torch.testing.assert_close(w.mean(), torch.tensor(1.0))
        assert w.argmax() == 4 and torch.equal(w, w.flip(0))   # peaked at the middle, symmetric
    assert w0[0] < 1e-2 < w5[0] < 1 and w0[4] > w5[4] > 1
    assert m.frame_weights(10, 9) is None and m.frame_weights(None, 9) is None
    with torch.no_grad():
        z_m, z_c = m.enc(x * 2 - 1), m.encode_content(x)
        err = (m.gen(z_c, z_m) - (x * 2 - 1)).pow(2).sum(2).mean((2, 3))    # (B, T)
        for it, want in ((0, (err * w0).mean()), (10, err.mean()), (None, err.mean())):
            torch.testing.assert_close(m._reconstruction(x * 2 - 1, z_m, z_c, it)["rec"][1], want)


def test_fake_frames_for_d_image_come_from_all_steps():
    """D_I sees fake frames from every time step (the authors' code used only the first)."""
    cfg = replace(TINY, image_frames=2, recon_weight=0.0)
    m = MDBiGAN(cfg)
    paths, codes, seen = [], [], set()
    m.sampler.register_forward_hook(lambda mod, inp, out: paths.append(out))
    m.disc_image.register_forward_hook(lambda mod, inp, out: codes.append(inp[1]))
    torch.manual_seed(0)
    for _ in range(20):
        paths.clear(), codes.clear()
        with torch.no_grad():
            m.d_loss(videos(cfg))
        z_m, fake = paths[0], codes[1].view(3, 2, -1)          # D_I scores real, then fake
        for b in range(3):
            for code in fake[b]:                                # which step each fake code is
                seen.add(int((z_m[b] - code[: cfg.dim_z_m]).abs().sum(1).argmin()))   # z_M, then z_C
    assert seen == set(range(cfg.frames))


def test_seeded_determinism_and_state_dict_roundtrip():
    cfg = TINY
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
    m = MDBiGAN(TINY)
    eps = torch.randn(6, TINY.dim_eps)
    m.sampler.backend = "torch"
    a = m.sampler(eps, TINY.frames)
    m.sampler.backend = "triton"
    b = m.sampler(eps, TINY.frames)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_videos_of_the_wrong_shape_are_a_clear_error():
    m = MDBiGAN(TINY)
    with pytest.raises(ValueError, match=r"videos must be \[B, 4, 1, 16, 16\]"):
        m.encode_motion(torch.rand(2, 4, 16, 16))


@pytest.mark.parametrize("kwargs,message", [
    pytest.param(dict(size=48), "power of two", id="size"),
    pytest.param(dict(frames=0), "frames must be >= 1", id="frames"),
    pytest.param(dict(sampler_hidden=-1), "sampler_hidden", id="sampler_hidden"),
    pytest.param(dict(prior_weight=-1.0), "prior_weight", id="prior_weight"),
    pytest.param(dict(lr=-1.0), "lr must be > 0", id="lr"),
    pytest.param(dict(beta1=1.5), "beta1", id="beta1"),
    pytest.param(dict(flow_size=1), "flow_size", id="flow_size"),
    pytest.param(dict(adv_warmup=-1), "adv_warmup", id="adv_warmup"),
    pytest.param(dict(recon_warmup=-1), "recon_warmup", id="recon_warmup"),
    pytest.param(dict(content_frame="first"), "content_frame", id="content_frame"),
    pytest.param(dict(loss="wasserstein"), "loss", id="loss"),
])
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs).validate()


def test_unknown_config_field_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Config fields"):
        Config.from_dict({"frames": 3, "bogus": 1})


@pytest.mark.parametrize("structured", [False, True], ids=["conv", "where-what"])
def test_from_checkpoint_round_trips(tmp_path, structured):
    torch.manual_seed(0)
    m = MDBiGAN(replace(TINY, structured=structured))
    torch.save({"version": mdbigan.CHECKPOINT_VERSION, "model": m.state_dict(),
                "config": dataclasses.asdict(m.cfg), "step": 1, "args": {}}, tmp_path / "ckpt.pt")
    for path in (tmp_path / "ckpt.pt", tmp_path):                # the file, or its folder
        m2 = MDBiGAN.from_checkpoint(str(path))
        assert not m2.training
        x = videos(m.cfg)
        torch.testing.assert_close(m2.encode_content(x), m.eval().encode_content(x), rtol=0, atol=0)


def test_from_checkpoint_takes_the_runs_average_of_the_weights(tmp_path):
    torch.manual_seed(0)
    m, avg = MDBiGAN(TINY), MDBiGAN(TINY)
    torch.save({"version": mdbigan.CHECKPOINT_VERSION, "model": m.state_dict(), "ema": avg.state_dict(),
                "config": dataclasses.asdict(m.cfg), "step": 1, "args": {}}, tmp_path / "ckpt.pt")
    x = videos(m.cfg)
    torch.testing.assert_close(MDBiGAN.from_checkpoint(str(tmp_path)).encode_content(x),
                               avg.eval().encode_content(x), rtol=0, atol=0)


def test_checkpoint_of_an_older_version_is_a_clear_error(tmp_path):
    m = MDBiGAN(TINY)
    torch.save({"model": m.state_dict(), "config": dataclasses.asdict(m.cfg), "step": 1},
               tmp_path / "old.pt")
    with pytest.raises(ValueError, match="older mdbigan.py"):
        MDBiGAN.from_checkpoint(str(tmp_path / "old.pt"))


@pytest.mark.parametrize("B,H,E,steps", [(5, 7, 3, 4), (1, 16, 16, 1), (37, 20, 9, 6)],
                         ids=["B5-H7-E3-T4", "B1-H16-E16-T1", "B37-H20-E9-T6"])
def test_copied_alone_recurrence_equals_kernel_reference(B, H, E, steps):
    """mdbigan.gru_feedback_torch (used when kernels/ is absent) is the kernel's reference."""
    from kernels import gru_feedback_ref
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(B, E, generator=g), torch.randn(3 * H, E, generator=g) * 0.3,
            torch.randn(3 * H, H, generator=g) * 0.3, torch.randn(3 * H, generator=g) * 0.1,
            torch.randn(3 * H, generator=g) * 0.1, torch.randn(E, H, generator=g) * 0.3]
    torch.testing.assert_close(gru_feedback_torch(*args, steps), gru_feedback_ref(*args, steps),
                               rtol=1e-6, atol=1e-6)


def test_works_copied_alone(tmp_path):
    """mdbigan.py alone in an empty folder trains a tiny step, and says once, plainly, that the
    motion prior runs as the PyTorch loop without kernels/."""
    code = ("import torch, mdbigan\n"
            "m = mdbigan.MDBiGAN(mdbigan.Config(frames=3, size=16, ch=4, ch_max=8, d_hidden=8))\n"
            "v = m.generate(*m.sample(2)); l, _ = m.eg_loss(v.detach()); l.backward()\n"
            "m.sample(2)\n"
            "print(tuple(v.shape), mdbigan.sampler_backend(m.cfg, 'cpu'))\n")
    r = run_copied_alone(os.path.join(os.path.dirname(__file__), "..", "mdbigan.py"), tmp_path, code)
    assert r.returncode == 0, r.stderr
    assert "(2, 3, 1, 16, 16) PyTorch loop (kernels/ not importable)" in r.stdout
    assert r.stderr.count("kernels/ is not importable") == 1, r.stderr


@pytest.mark.parametrize("name", ["structured32", "generic32"])
def test_pretrained_model_generates(name):
    """pretrained/NAME.pt (inference weights only) loads, samples and generates frames in [0, 1]
    with ink in them, at its own size, from its own family."""
    path = os.path.join(os.path.dirname(__file__), "..", "pretrained", f"{name}.pt")
    ck = torch.load(path, weights_only=True)
    assert "opt_d" not in ck and not any(k.startswith("disc_") for k in ck["ema"])
    m = MDBiGAN.from_checkpoint(path)
    torch.manual_seed(0)
    with torch.no_grad():
        v = m.generate(*m.sample(4))
    assert v.shape == (4, 20, 1, 32, 32) and m.cfg.structured == (name == "structured32")
    assert v.min() >= 0 and v.max() <= 1
    assert ((v > 0.5).flatten(2).sum(-1) > 10).all()             # every frame shows a digit's ink
    assert m.content_prior.weights.count_nonzero() > 1           # the fitted sampling priors came too


@pytest.mark.parametrize("kw", [dict(), dict(structured=True, prior_weight=1.0, sampler_hidden=6),
                                dict(warp=True),
                                dict(warp=True, pose_picture=True, swap_weight=1.0, independence_weight=1.0,
                                     independence_codes="swap", dependence_weight=1.0,
                                     dependence_memory=0.9, leak_weight=1.0)],
                         ids=["conv", "where-what-with-prior", "warp", "generic"])
def test_losses_under_bf16_autocast(kw):
    """Training on CUDA runs under bf16 autocast: every loss works there (the recurrence and the
    canvas geometry stay in fp32); checked with the CPU's bf16 autocast."""
    torch.manual_seed(0)
    m = MDBiGAN(replace(TINY, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d_loss, _ = m.d_loss(videos(m.cfg))
        g_loss, logs = m.eg_loss(videos(m.cfg))
    g_loss.backward()
    assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert all(p.grad is not None for p in m.eg_parameters())


@pytest.mark.parametrize("inverse", [True, False], ids=["place", "glimpse"])
def test_grid_equals_affine_grid(inverse):
    """mdbigan.grid is F.affine_grid of [[s, 0, t_x], [0, s, t_y]] without the batched matmul."""
    from mdbigan import GLIMPSE, grid
    pose = torch.rand(5, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s, t = (1 / GLIMPSE, -pose / GLIMPSE) if inverse else (GLIMPSE, pose)
    theta = torch.cat([torch.eye(2).expand(5, 2, 2) * s, t[:, :, None]], 2)
    want = torch.nn.functional.affine_grid(theta, (5, 1, 24, 24), align_corners=False)
    torch.testing.assert_close(grid(pose, 24, inverse), want, rtol=0, atol=1e-6)


def test_unfitted_mixture_prior_is_standard_normal():
    from mdbigan import GaussianMixture
    torch.manual_seed(0)
    z = GaussianMixture(5, 3).sample(20000)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(3), atol=0.03, rtol=0)


def test_fitted_mixture_prior_draws_from_its_components():
    from mdbigan import GaussianMixture
    prior = GaussianMixture(2, 2)
    prior.set([0.25, 0.75], [[5.0, 0.0], [-5.0, 0.0]], torch.stack([torch.eye(2) * 0.01, torch.eye(2) * 0.04]))
    torch.manual_seed(0)
    z = prior.sample(8000)
    right = z[:, 0] > 0
    assert abs(right.float().mean() - 0.25) < 0.02
    torch.testing.assert_close(z[right].std(0), torch.full((2,), 0.1), atol=0.01, rtol=0)


def test_mixture_temperature_scales_the_spread():
    from mdbigan import GaussianMixture
    prior = GaussianMixture(1, 2, temperature=0.5)
    prior.set([1.0], [[1.0, -1.0]], torch.eye(2)[None] * 4.0)
    torch.manual_seed(0)
    z = prior.sample(20000)
    torch.testing.assert_close(z.std(0), torch.ones(2), atol=0.03, rtol=0)     # 0.5 * 2
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -1.0]), atol=0.03, rtol=0)


def test_sample_uses_the_fitted_priors():
    torch.manual_seed(0)
    m = MDBiGAN(replace(TINY, structured=True, prior_weight=1.0, prior_components=3))
    m.content_prior.set([1.0, 0, 0], torch.full((3, 8), 7.0), torch.eye(8).repeat(3, 1, 1) * 1e-6)
    z_c, z_m = m.sample(4)
    torch.testing.assert_close(z_c, torch.full((4, 8), 7.0), atol=0.01, rtol=0)
    assert z_m.shape == (4, m.cfg.frames, m.cfg.dim_z_m)


def test_mixture_fitted_with_fewer_components_leaves_the_rest_unused():
    from mdbigan import GaussianMixture
    prior = GaussianMixture(3, 2)
    prior.set([1.0], [[4.0, 4.0]], torch.eye(2)[None] * 1e-4)
    torch.manual_seed(0)
    torch.testing.assert_close(prior.sample(500), torch.full((500, 2), 4.0), atol=0.05, rtol=0)
    assert prior.weights.tolist() == [1.0, 0.0, 0.0]
