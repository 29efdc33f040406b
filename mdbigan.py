"""MDBiGAN: Motion Disentangled Bidirectional GAN (the paper in shared/paper, SPEC.md section 1).

A video X = x(1..T) is split into one content code z_C and per-frame motion codes z_M(1..T).
  E    (2-D convs, per frame)        x(t) -> z_M(t)
  E_C  (2-D convs, mean over time)   X -> z_C              (beyond the paper: its future work)
  G    (2-D transposed convs)        (z_C, z_M(t)) -> x(t)
  sampler  GRU with linear feedback  eps ~ N(0, I) -> z_M(1..T)   (eqs. 12-14, kernels/)
  D_I  (2-D convs)  (x(t), z_M(t) [, z_C]) -> score per frame
  D_V  (3-D convs)  (X, Z_M [, z_C]) -> score per video
Both discriminators see BiGAN pairs: real (x, E(x)), fake (G(z), z) with z from the priors.

Where this differs from the paper and the authors' code, and why (SPEC.md sections 3-5):
  - D_I's fake frames come from every time step (the authors used only the first GRU step), and
    real and fake frames are drawn at the same random steps.
  - G ends in tanh and the data are mapped from [0, 1] to [-1, 1] before anyone sees them (the
    authors fed [0, 1] reals against [-1, 1] fakes).
  - No BatchNorm in the discriminators (they saw all-real and all-fake batches); spectral norm
    instead, hinge loss by default (BigBiGAN), dropout 0.2 (ALI), optional instance noise and R1.
  - Unary scores for the image alone and the code alone beside the joint score (BigBiGAN), so
    that image realism keeps a gradient when the joint term saturates (the paper's failure).
  - A content encoder E_C, and two consistency terms (ALICE-style), off to reproduce the paper:
    recon_weight * |G(E_C(X), E(X)) - X|^2 and latent_weight * |E(G(z)) - z_M| + |E_C(G(z)) - z_C|
    (the latter trains E, E_C and G, not the prior).
  - z_M is scaled by tanh inside the GRU, so E's output is tanh-bounded to the same range.
  - Config.structured (the CPU preset): E, E_C and G split where from what (see that section
    below). With the plain conv E and G, z_M carried the digit (a linear probe read it 67% of
    the time) and reconstructions were blurred blobs after 20 CPU minutes (README).
  - prior_weight: the sampler is fitted as the decoder of a VAE over E's code paths (its
    encoder q(eps | z_M(1..T)) is prior_enc), so that sampled paths are ones real videos have.
Set content_encoder=False, recon_weight=latent_weight=0, loss="bce", unary=False (and
structured=False, the default) to get close to the paper as written.

Usage:
    from mdbigan import Config, MDBiGAN
    model = MDBiGAN(Config.small())             # or Config() for the paper's sizes
    z_c, z_m = model.sample(8)                  # [8, dim_z_c], [8, T, dim_z_m]
    videos = model.generate(z_c, z_m)           # [8, T, 1, S, S] in [0, 1]
    d_loss, d_logs = model.d_loss(real_videos)  # discriminator step
    g_loss, g_logs = model.eg_loss(real_videos) # encoder + generator step
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    frames: int = 20            # T, frames per video (paper: 20)
    size: int = 64              # S, frames are S x S grayscale; a power of two >= 16
    dim_z_m: int = 16           # motion code per frame (paper: 16), also the GRU's hidden size
    dim_z_c: int = 64           # content code per video (paper: 64)
    dim_eps: int = 16           # size of the GRU input eps / feedback e(t)
    ch: int = 64                # base channel count of every conv stack (doubles per level)
    ch_max: int = 256           # cap on channels per level
    d_hidden: int = 256         # width of the discriminators' feature and joint layers
    content_encoder: bool = True   # E_C: X -> z_C (beyond the paper); False = paper as written
    loss: str = "hinge"         # "hinge" (BigBiGAN) or "bce" (non-saturating, as the authors)
    spectral_norm: bool = True  # spectral normalisation in D_I and D_V
    unary: bool = True          # BigBiGAN unary scores for x alone and z alone
    d_dropout: float = 0.2      # dropout in the discriminators' heads (ALI)
    instance_noise: float = 0.0 # std of Gaussian noise on every frame the discriminators see
    r1_gamma: float = 0.0       # R1 penalty on real images (DIGAN: ~1); 0 = off
    image_frames: int = 4       # frames per video that D_I scores, at random steps, real and fake
    adv_weight: float = 1.0     # weight of the adversarial terms in the E/G loss
    recon_weight: float = 1.0   # reconstruction G(E_C(X), E(X)) vs X (needs content_encoder)
    recon_loss: str = "mse"     # "mse" or "l1" (l1's per-pixel median of a sparse digit is black)
    latent_weight: float = 1.0  # L1 of E(G(z)) vs z_M and E_C(G(z)) vs z_C
    lr: float = 2e-4            # Adam learning rate of E, E_C, G, sampler and D_I
    lr_dv_scale: float = 1.0    # D_V's learning rate = lr * this (StyleGAN-V uses 0.1)
    beta1: float = 0.5          # Adam betas (authors: 0.5, 0.999)
    beta2: float = 0.999
    sampler_backend: str = "auto"  # gru_feedback backend: "auto", "triton" or "torch"
    structured: bool = False    # where/what split in E, E_C and G (see the module docstring)
    centre_weight: float = 1.0  # structured: (canvas centre of mass - its centre)^2 in frame pixels
    sampler_hidden: int = 0     # GRU state size; 0: dim_z_m and z_M(t) = h(t), as the paper
    crisp: bool = True          # structured: whole-pixel placement, black background (see below)
    prior_weight: float = 0.0   # fit the motion prior to E's code paths as a sequence VAE's decoder

    @classmethod
    def small(cls, **kw):
        """A model for CPU runs: 32x32 frames, fewer channels."""
        return cls(**{**dict(size=32, ch=32, ch_max=128, d_hidden=128), **kw})

    def validate(self):
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"Config.size must be a power of two >= 16, got {self.size}")
        for k in ("frames", "dim_z_m", "dim_z_c", "dim_eps", "ch", "ch_max", "d_hidden", "image_frames"):
            if getattr(self, k) < 1:
                raise ValueError(f"Config.{k} must be >= 1, got {getattr(self, k)}")
        if self.sampler_hidden < 0:
            raise ValueError(f"Config.sampler_hidden must be >= 0, got {self.sampler_hidden}")
        if self.prior_weight < 0:
            raise ValueError(f"Config.prior_weight must be >= 0, got {self.prior_weight}")
        if self.loss not in ("hinge", "bce"):
            raise ValueError(f"Config.loss must be 'hinge' or 'bce', got {self.loss!r}")
        if self.recon_weight > 0 and not self.content_encoder:
            raise ValueError("Config.recon_weight > 0 needs content_encoder=True")
        if self.structured and not self.content_encoder:
            raise ValueError("Config.structured=True needs content_encoder=True (E_C reads the glimpses)")
        return self

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Config fields {sorted(unknown)}: checkpoint from another version?")
        return cls(**d).validate()


def gru_feedback_torch(eps, w_ih, w_hh, b_ih, b_hh, w_m, steps):
    """The plain PyTorch recurrence, used when kernels/ is not beside this file (copied alone)."""
    h, e, zs = eps.new_zeros(eps.shape[0], w_hh.shape[1]), eps, []
    for _ in range(steps):
        i_r, i_z, i_n = (e @ w_ih.t() + b_ih).chunk(3, 1)
        h_r, h_z, h_n = (h @ w_hh.t() + b_hh).chunk(3, 1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
        zs.append(h)
        e = h @ w_m.t()
    return torch.stack(zs, 1)                                   # (B, T, H)


def _gru_feedback(*args, backend="auto"):
    try:  # imported lazily so that this file works on its own
        from kernels import gru_feedback
    except ImportError:
        return gru_feedback_torch(*args)
    return gru_feedback(*args, backend=backend)


def _levels(size):
    return int(math.log2(size // 4))                            # stride-2 stages down to 4x4


def conv_stack(cfg, in_ch, sn=False, dims=2, levels=None):
    """Stride-2 convs from S x S to 4 x 4 (or `levels` of them), LeakyReLU; returns (net, out_ch)."""
    Conv = nn.Conv2d if dims == 2 else nn.Conv3d
    # 3-D: time is halved at each level too (T = 20 -> 10 -> 5 -> 3), which cuts D_V's cost ~4x
    k, s, p = (4, 2, 1) if dims == 2 else ((3, 4, 4), (2, 2, 2), (1, 1, 1))
    layers, c = [], in_ch
    for i in range(_levels(cfg.size) if levels is None else levels):
        c_out = min(cfg.ch * 2 ** i, cfg.ch_max)
        conv = Conv(c, c_out, k, s, p)
        layers += [_sn(conv, sn), nn.LeakyReLU(0.2)]
        c = c_out
    return nn.Sequential(*layers), c


def _sn(m, on):
    return nn.utils.parametrizations.spectral_norm(m) if on else m


class Generator(nn.Module):
    """Code -> image: linear to base x base, then transposed convs doubling `levels` times.
    Ends in tanh ([-1, 1], the frames) or sigmoid ([0, 1], the structured variant's canvas)."""

    def __init__(self, cfg, dim_in, levels, base=4, out="tanh"):
        super().__init__()
        chans = [min(cfg.ch * 2 ** i, cfg.ch_max) for i in reversed(range(levels))]
        self.fc = nn.Linear(dim_in, chans[0] * base * base)
        # GroupNorm, not BatchNorm: no running statistics, so G behaves the same in train and
        # eval mode and on any batch size (BatchNorm's eval-mode output was noise early on)
        norm = lambda c: nn.GroupNorm(min(8, c // 2) or 1, c)
        layers = [norm(chans[0]), nn.ReLU()]
        for c_in, c_out in zip(chans, chans[1:] + [None]):
            if c_out is None:
                layers += [nn.ConvTranspose2d(c_in, 1, 4, 2, 1), nn.Tanh() if out == "tanh" else nn.Sigmoid()]
            else:
                layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), norm(c_out), nn.ReLU()]
        self.net, self.shape = nn.Sequential(*layers), (chans[0], base, base)
        if out == "sigmoid":   # a canvas starts black, as the frames' background, not 0.5 grey
            nn.init.constant_(layers[-2].bias, -4.0)

    def forward(self, z):                                       # z: (N, dim_in)
        return self.net(self.fc(z).view(-1, *self.shape))      # (N, 1, base * 2**levels, ...)


# ---------------------------------------------------------------- the structured variant
# Config.structured = True splits "where" from "what" (as DDPAE, Hsieh et al. 2018, and AIR do
# for moving digits): E reads only where the digit is, through a 2-number bottleneck, so z_M
# cannot carry which digit it is; E_C reads digit-centred glimpses taken where E says; G draws one
# canvas per video from z_C and places it where z_M says (a spatial transformer). A penalty keeps
# each canvas's centre of mass at its centre: else where a digit sits in its canvas is a free
# convention per digit, and z_M carries the digit through it. Translation only (no rotation).
# Config.crisp renders as the data are made: the canvas at whole-pixel positions (a bilinear
# sub-pixel shift blurs each frame differently) on a black background (canvas pixels under
# INK set to 0), with the gradient of the smooth rendering (straight-through). Rendered so (at a
# threshold of 0.1), the reconstructions of a checkpoint trained without it kept one judged digit
# over all 20 frames in 99% of videos, not 67% (1,000 held-out videos).
GLIMPSE = 0.625  # canvas / glimpse width as a fraction of the frame (a 28/64 digit plus margin)
INK = 0.25       # crisp: canvas pixels below this are background (the sigmoid never reaches 0;
                 # at 0.1 a faint halo made sampled canvases wider than the digit, cut by the edge)


def _affine(pose, scale, inverse):
    """pose (N, 2) in [-1, 1] frame coordinates -> (N, 2, 3) affine_grid matrices."""
    N = pose.shape[0]
    eye = torch.eye(2, device=pose.device, dtype=pose.dtype).expand(N, 2, 2)
    if inverse:    # frame -> canvas coordinates: place a canvas at pose
        return torch.cat([eye / scale, -pose[:, :, None] / scale], 2)
    return torch.cat([eye * scale, pose[:, :, None]], 2)    # canvas -> frame: take a glimpse


def place(canvas, pose, size):
    """canvas (N, 1, c, c) in [0, 1], pose (N, 2) -> frames (N, 1, size, size) in [0, 1]."""
    grid = F.affine_grid(_affine(pose, GLIMPSE, True), (pose.shape[0], 1, size, size), align_corners=False)
    return F.grid_sample(canvas, grid, align_corners=False)  # zeros outside the canvas: black


def glimpse(frames, pose, size):
    """frames (N, 1, S, S) in [-1, 1], pose (N, 2) -> (N, 1, size, size) around pose, in [-1, 1]."""
    grid = F.affine_grid(_affine(pose, GLIMPSE, False), (pose.shape[0], 1, size, size), align_corners=False)
    return F.grid_sample((frames + 1) / 2, grid, align_corners=False) * 2 - 1


class WhereEncoder(nn.Module):
    """E, structured: frame -> heatmap -> spatial soft-argmax (Finn et al. 2016; Jakab et al.
    2018) -> p(t) in [-1, 1]^2 -> z_M(t) = tanh(W p(t) + b). The heatmap's logits are a conv net
    plus alpha * the frame (alpha learned, from 5), so that E starts out looking at the ink: with
    the conv net alone, 490 CPU-preset steps left every reconstruction a faint blob in one place.
    W starts as [I; 0], the model's pose map as its inverse, so G first draws where E looks."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg.ch
        self.net = nn.Sequential(nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(c, 1, 3, 1, 1))
        self.alpha = nn.Parameter(torch.tensor(5.0))
        self.lift = nn.Linear(2, cfg.dim_z_m)
        with torch.no_grad():
            self.lift.weight.zero_()[:2].copy_(torch.eye(2)[: cfg.dim_z_m])
            self.lift.bias.zero_()

    def forward(self, x):                                       # x: (B, T, 1, S, S) in [-1, 1]
        B, T = x.shape[:2]
        x = x.flatten(0, 1)
        h = self.net(x) + self.alpha * F.avg_pool2d(x, 2)      # (B*T, 1, S/2, S/2) heatmap logits
        n = h.shape[-1]
        w = h.flatten(1).softmax(1).view(-1, n, n)
        c = (torch.arange(n, device=x.device, dtype=w.dtype) * 2 + 1) / n - 1   # cell centres
        p = torch.stack([(w.sum(1) * c).sum(1), (w.sum(2) * c).sum(1)], 1)      # (x, y)
        return torch.tanh(self.lift(p)).view(B, T, -1)          # (B, T, dim_z_m)


class GlimpseEncoder(nn.Module):
    """E_C, structured: a glimpse of every frame at G's pose of z_M(t), conv stack, mean over time."""

    def __init__(self, cfg):
        super().__init__()
        self.size = _canvas(cfg.size)
        self.convs, c = conv_stack(cfg, 1, levels=_levels(cfg.size) - 1)     # c x c -> 5 x 5
        self.fc = nn.Linear(c * 25, cfg.dim_z_c)

    def forward(self, x, pose):                                 # (B, T, 1, S, S), (B, T, 2)
        B, T = x.shape[:2]
        g = glimpse(x.flatten(0, 1), pose.flatten(0, 1), self.size)
        return self.fc(self.convs(g).flatten(1).view(B, T, -1).mean(1))    # (B, dim_z_c)


def snap(pose, size):
    """Pose -> the nearest one at which place() copies canvas pixels onto frame pixels (one
    canvas pixel is one frame pixel, 2 / size wide, and GLIMPSE - 1 is a multiple of it)."""
    return torch.round(pose * (size / 2)) / (size / 2)


class CanvasGenerator(nn.Module):
    """G, structured: z_C -> one canvas per video; frame t = the canvas placed at pose(z_M(t))."""

    def __init__(self, cfg):
        super().__init__()
        self.draw = Generator(cfg, cfg.dim_z_c, _levels(cfg.size) - 1, base=5, out="sigmoid")
        self.size, self.crisp = cfg.size, cfg.crisp

    def shown(self, canvas):
        """The ink a crisp G shows: canvas pixels under INK set to 0 (the canvas as is otherwise)."""
        return canvas * (canvas > INK) if self.crisp else canvas

    def forward(self, z_c, pose):                               # (B, dim_z_c), (B, T, 2)
        B, T = pose.shape[:2]
        canvas = self.draw(z_c)                                 # (B, 1, c, c) in [0, 1]
        canvas = canvas[:, None].expand(B, T, *canvas.shape[1:]).flatten(0, 1)
        pose = pose.flatten(0, 1)
        frames = place(canvas, pose, self.size)
        if self.crisp:   # forward: crisp; backward: the smooth rendering's gradient (with the
            # crisp rendering's own, the CPU preset's rec loss was 0.073 at step 200, not 0.029)
            crisp = place(self.shown(canvas), snap(pose, self.size).detach(), self.size)
            frames = frames + (crisp - frames).detach()
        return (frames * 2 - 1).view(B, T, 1, self.size, self.size)


def canvas_offset(canvas, size):
    """canvas (N, 1, c, c) >= 0 -> its centre of mass minus its centre, in frame pixels (N, 2)."""
    c = canvas.shape[-1]
    pos = torch.arange(c, device=canvas.device, dtype=canvas.dtype) + 0.5 - c / 2
    w = canvas[:, 0] / (canvas.sum((1, 2, 3))[:, None, None] + 1e-6)
    return torch.stack([(w.sum(1) * pos).sum(1), (w.sum(2) * pos).sum(1)], 1) * (GLIMPSE * size / c)


def _canvas(size):
    return 5 * 2 ** (_levels(size) - 1)                        # 20 at size 32: GLIMPSE * size


class FrameEncoder(nn.Module):
    """Frame -> code: conv stack to 4x4, then a linear layer; optional mean over time (E_C)."""

    def __init__(self, cfg, dim_out, pool_time):
        super().__init__()
        self.convs, c = conv_stack(cfg, 1)
        self.fc = nn.Linear(c * 16, dim_out)
        self.pool_time = pool_time

    def forward(self, x):                                       # x: (B, T, 1, S, S) in [-1, 1]
        B, T = x.shape[:2]
        h = self.convs(x.flatten(0, 1)).flatten(1)             # (B*T, C*16)
        if self.pool_time:
            return self.fc(h.view(B, T, -1).mean(1))            # (B, dim_out)
        return torch.tanh(self.fc(h)).view(B, T, -1)            # (B, T, dim_out), as the GRU's range


class JointDiscriminator(nn.Module):
    """BiGAN discriminator: image features, code features, a joint head and two unary heads."""

    def __init__(self, cfg, dim_code, video):
        super().__init__()
        sn, h, p = cfg.spectral_norm, cfg.d_hidden, cfg.d_dropout
        self.convs, c = conv_stack(cfg, 1, sn=sn, dims=3 if video else 2)
        t_out = cfg.frames if video else 1
        for _ in range(_levels(cfg.size) if video else 0):
            t_out = (t_out - 1) // 2 + 1                        # the 3-D convs' stride in time
        n_img = c * 16 * t_out
        self.f_x = nn.Sequential(nn.Flatten(), _sn(nn.Linear(n_img, h), sn), nn.LeakyReLU(0.2), nn.Dropout(p))
        self.f_z = nn.Sequential(_sn(nn.Linear(dim_code, h), sn), nn.LeakyReLU(0.2), nn.Dropout(p),
                                 _sn(nn.Linear(h, h), sn), nn.LeakyReLU(0.2), nn.Dropout(p))
        self.joint = nn.Sequential(_sn(nn.Linear(2 * h, h), sn), nn.LeakyReLU(0.2), nn.Dropout(p),
                                   _sn(nn.Linear(h, 1), sn))
        self.s_x, self.s_z = _sn(nn.Linear(h, 1), sn), _sn(nn.Linear(h, 1), sn)
        self.video = video

    def forward(self, x, code):
        """x: (N, 1, S, S) or (N, 1, T, S, S); code: (N, dim_code). Returns [joint, x, z] scores."""
        fx, fz = self.f_x(self.convs(x)), self.f_z(code)
        return [self.joint(torch.cat([fx, fz], 1)), self.s_x(fx), self.s_z(fz)]


class MotionSampler(nn.Module):
    """The prior over z_M: GRUCell with linear feedback, eps(1) ~ N(0, I) (paper eqs. 12-14).
    With sampler_hidden > 0 the state h is wider than the code and z_M(t) = tanh(W h(t) + b)."""

    def __init__(self, cfg):
        super().__init__()
        H = cfg.sampler_hidden or cfg.dim_z_m
        self.cell = nn.GRUCell(cfg.dim_eps, H)
        self.w_m = nn.Linear(H, cfg.dim_eps, bias=False)        # weight [E, H]
        self.readout = nn.Linear(H, cfg.dim_z_m) if cfg.sampler_hidden else None
        self.cfg = cfg

    def forward(self, eps, steps):                              # eps: (B, dim_eps)
        c = self.cell
        h = _gru_feedback(eps, c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh, self.w_m.weight,
                          steps, backend=self.cfg.sampler_backend)      # (B, T, H)
        return h if self.readout is None else torch.tanh(self.readout(h))   # (B, T, dim_z_m)


PRIOR_SIGMA = 0.05   # prior_weight: std of the path fit's Gaussian, in z_M units (~1 px at first)


class MDBiGAN(nn.Module):
    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = cfg = (cfg or Config()).validate()
        if cfg.structured:
            self.enc, self.enc_c, self.gen = WhereEncoder(cfg), GlimpseEncoder(cfg), CanvasGenerator(cfg)
            self.pose = nn.Linear(cfg.dim_z_m, 2)       # z_M(t) -> where G draws and E_C looks
            with torch.no_grad():                       # ~ the inverse of E's tanh(W p + b)
                self.pose.weight.zero_()[:, :2].copy_(torch.eye(2)[:, : cfg.dim_z_m])
                self.pose.bias.zero_()
        else:
            self.enc = FrameEncoder(cfg, cfg.dim_z_m, pool_time=False)                  # E
            self.enc_c = FrameEncoder(cfg, cfg.dim_z_c, pool_time=True) if cfg.content_encoder else None
            self.gen = Generator(cfg, cfg.dim_z_c + cfg.dim_z_m, _levels(cfg.size))      # G
            self.pose = None
        self.sampler = MotionSampler(cfg)
        # q(eps | z_M(1..T)): with prior_weight > 0 the sampler is also the decoder of a VAE on
        # E's code paths, so that its paths are ones E produces (adversarially alone, 20 CPU
        # minutes gave paths that jumped, stood still, or left the frame)
        self.prior_enc = nn.Sequential(
            nn.Linear(cfg.frames * cfg.dim_z_m, cfg.d_hidden), nn.LeakyReLU(0.2),
            nn.Linear(cfg.d_hidden, 2 * cfg.dim_eps)) if cfg.prior_weight > 0 else None
        dim_c = cfg.dim_z_c if cfg.content_encoder else 0
        self.disc_image = JointDiscriminator(cfg, cfg.dim_z_m + dim_c, video=False)  # D_I
        self.disc_video = JointDiscriminator(cfg, cfg.frames * cfg.dim_z_m + dim_c, video=True)  # D_V

    # ------------------------------------------------------------------ the API
    def _check(self, videos):
        T, S = self.cfg.frames, self.cfg.size
        if videos.dim() != 5 or tuple(videos.shape[1:]) != (T, 1, S, S):
            raise ValueError(f"videos must be [B, {T}, 1, {S}, {S}] floats in [0, 1], got "
                             f"{list(videos.shape)}")
        return videos * 2 - 1                                   # the model works in [-1, 1]

    def encode_motion(self, videos):
        """videos [B, T, 1, S, S] in [0, 1] -> z_M [B, T, dim_z_m]."""
        return self.enc(self._check(videos))

    def encode_content(self, videos):
        """videos [B, T, 1, S, S] in [0, 1] -> z_C [B, dim_z_c] (needs the content encoder)."""
        if self.enc_c is None:
            raise RuntimeError("this model has no content encoder (Config.content_encoder=False)")
        return self._content(self._check(videos))

    def _content(self, x, z_m=None):                            # x in [-1, 1] -> z_C
        if self.pose is None:
            return self.enc_c(x)
        return self.enc_c(x, self.pose(self.enc(x) if z_m is None else z_m))

    def sample(self, n, device=None):
        """Codes from the priors: z_C [n, dim_z_c] ~ N(0, I), z_M [n, T, dim_z_m] from the GRU."""
        device = device or next(self.parameters()).device
        z_c = torch.randn(n, self.cfg.dim_z_c, device=device)
        z_m = self.sampler(torch.randn(n, self.cfg.dim_eps, device=device), self.cfg.frames)
        return z_c, z_m

    def _generate(self, z_c, z_m):                              # -> (B, T, 1, S, S) in [-1, 1]
        if self.pose is not None:
            return self.gen(z_c, self.pose(z_m))
        B, T = z_m.shape[:2]
        z = torch.cat([z_c[:, None].expand(B, T, z_c.shape[1]), z_m], 2)   # (B, T, dz_c + dz_m)
        return self.gen(z.flatten(0, 1)).view(B, T, 1, self.cfg.size, self.cfg.size)

    def generate(self, z_c, z_m):
        """(z_C [B, dim_z_c], z_M [B, T, dim_z_m]) -> videos [B, T, 1, S, S] in [0, 1]."""
        return (self._generate(z_c, z_m) + 1) / 2

    # ------------------------------------------------------------------ losses
    def _scores(self, x, z_m, z_c, t_idx):
        """D_I on frames t_idx (B, k) and D_V on whole videos; lists of score tensors."""
        cfg = self.cfg
        if cfg.instance_noise > 0:
            x = x + cfg.instance_noise * torch.randn_like(x)
        B, T = z_m.shape[:2]
        b_idx = torch.arange(B, device=x.device)[:, None]
        frames = x[b_idx, t_idx].flatten(0, 1)                  # (B*k, 1, S, S)
        codes = z_m[b_idx, t_idx].flatten(0, 1)                 # (B*k, dim_z_m)
        vcode = z_m.flatten(1)                                  # (B, T*dim_z_m)
        if z_c is not None:
            codes = torch.cat([codes, z_c.repeat_interleave(t_idx.shape[1], 0)], 1)
            vcode = torch.cat([vcode, z_c], 1)
        s_i = self.disc_image(frames, codes)
        s_v = self.disc_video(x.transpose(1, 2), vcode)         # (B, 1, T, S, S)
        return s_i, s_v

    def _pairs(self, videos):
        """Real pairs (x, E(x) [, E_C(x)]) and fake pairs (G(z), z), in [-1, 1]."""
        x = self._check(videos)
        B = x.shape[0]
        z_m_real = self.enc(x)
        z_c_real = self._content(x, z_m_real) if self.enc_c is not None else None
        z_c, z_m = self.sample(B, x.device)
        if self.prior_enc is not None:   # the prior is fitted to E's paths alone (prior_fit): with the
            z_m = z_m.detach()           # adversarial gradient too, 30% of paths left the real positions
        x_fake = self._generate(z_c, z_m)
        k = min(self.cfg.image_frames, self.cfg.frames)         # the same random steps for both
        t_idx = torch.rand(B, self.cfg.frames, device=x.device).argsort(1)[:, :k]
        return (x, z_m_real, z_c_real), (x_fake, z_m, z_c if self.enc_c is not None else None), t_idx

    def d_loss(self, videos):
        """Discriminator loss (D_I + D_V), to minimise w.r.t. their parameters only."""
        with torch.no_grad():      # E, E_C, G and the sampler are fixed in this step
            (x, zm_r, zc_r), (xf, zm_f, zc_f), t_idx = self._pairs(videos)
        x = x.requires_grad_(self.cfg.r1_gamma > 0)
        s_real = self._scores(x, zm_r, zc_r, t_idx)
        s_fake = self._scores(xf, zm_f, zc_f, t_idx)
        logs, total = {}, 0
        for name, sr, sf in zip(("d_i", "d_v"), s_real, s_fake):
            l = sum(self._d_term(a, b) for a, b in zip(sr, sf) if self.cfg.unary or a is sr[0])
            logs[name] = l.detach()
            total = total + l
        if self.cfg.r1_gamma > 0:   # R1 on the joint and image scores of real frames
            s = sum(s.sum() for ss in s_real for s in ss[:2])
            g, = torch.autograd.grad(s, x, create_graph=True)
            r1 = 0.5 * self.cfg.r1_gamma * g.pow(2).flatten(1).sum(1).mean()
            total, logs["r1"] = total + r1, r1.detach()
        return total, logs

    def _d_term(self, s_real, s_fake):
        if self.cfg.loss == "hinge":
            return F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()
        return F.softplus(-s_real).mean() + F.softplus(s_fake).mean()

    def eg_loss(self, videos):
        """Encoder + generator (+ sampler) loss: the adversarial terms with swapped roles, plus
        the reconstruction and latent consistency terms. Minimise w.r.t. E, E_C, G, sampler."""
        cfg = self.cfg
        (x, zm_r, zc_r), (xf, zm_f, zc_f), t_idx = self._pairs(videos)
        s_real = self._scores(x, zm_r, zc_r, t_idx)
        s_fake = self._scores(xf, zm_f, zc_f, t_idx)
        logs, total = {}, 0
        for sr, sf in zip(s_real, s_fake):
            for j, (a, b) in enumerate(zip(sr, sf)):
                if j > 0 and not cfg.unary:
                    continue
                if cfg.loss == "hinge":    # BigBiGAN: E and G minimise s(real) - s(fake)
                    total = total + a.mean() - b.mean()
                else:                      # non-saturating, labels swapped
                    total = total + F.softplus(a).mean() + F.softplus(-b).mean()
        logs["g"] = total.detach()
        total = cfg.adv_weight * total
        if cfg.recon_weight > 0:
            diff = self._generate(zc_r, zm_r) - x
            rec = diff.pow(2).mean() if cfg.recon_loss == "mse" else diff.abs().mean()
            total, logs["rec"] = total + cfg.recon_weight * rec, rec.detach()
        if cfg.structured and cfg.centre_weight > 0:
            # the canvas's anchor is its centre of mass: otherwise where a digit sits in its canvas
            # and where E points are a free convention per digit, and z_M leaks the digit by it
            # (measured: a linear probe read the digit from z_M 27% of the time without this term)
            # (crisp: of the ink G shows; centring the whole canvas left each digit's visible ink
            # off centre by its own mean offset, up to 0.7 px, and the probe read 0.23 of digits)
            cen = canvas_offset(self.gen.shown(self.gen.draw(zc_r)), cfg.size).pow(2).sum(1).mean()
            total, logs["centre"] = total + cfg.centre_weight * cen, cen.detach()
        if cfg.latent_weight > 0:
            # trains E, E_C and G, not the prior (its codes detached, G run again on them): into
            # the sampler this term outweighed the adversarial one (x0.1 on the CPU preset), and
            # sampled paths ran off the frame
            zm_f, zc_f = zm_f.detach(), zc_f.detach() if zc_f is not None else None
            zc_g = zc_f if zc_f is not None else torch.randn(len(zm_f), cfg.dim_z_c, device=zm_f.device)
            xf = self._generate(zc_g, zm_f)
            zm_rec = self.enc(xf)
            lat = (zm_rec - zm_f).abs().mean()
            if self.enc_c is not None:
                lat = lat + (self._content(xf, zm_rec) - zc_f).abs().mean()
            total, logs["lat"] = total + cfg.latent_weight * lat, lat.detach()
        if self.prior_enc is not None:                          # trains the sampler and q only
            prior = self.prior_fit(zm_r.detach())
            total, logs["prior"] = total + cfg.prior_weight * prior, prior.detach()
        return total, logs

    def prior_fit(self, path):
        """Negative ELBO of code paths [B, T, dim_z_m] under the sampler as a VAE's decoder,
        eps ~ q(eps | path) = N(mu, sigma^2) from prior_enc, p(eps) = N(0, I); nats per number."""
        mu, logvar = self.prior_enc(path.flatten(1)).chunk(2, 1)
        logvar = logvar.clamp(-12, 4)
        eps = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        fit = (self.sampler(eps, path.shape[1]) - path).pow(2).sum((1, 2)) / (2 * PRIOR_SIGMA ** 2)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (fit + kl).mean() / path[0].numel()

    def forward(self, videos, step):
        """step "d" -> d_loss, "eg" -> eg_loss; a forward() so that DDP can wrap the model."""
        if step == "d":
            return self.d_loss(videos)
        if step == "eg":
            return self.eg_loss(videos)
        raise ValueError(f"step must be 'd' or 'eg', got {step!r}")

    def d_parameters(self):
        return list(self.disc_image.parameters()), list(self.disc_video.parameters())

    def eg_parameters(self):
        mods = [self.enc, self.gen, self.sampler] + [
            m for m in (self.enc_c, self.pose, self.prior_enc) if m is not None]
        return [p for m in mods for p in m.parameters()]
