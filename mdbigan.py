"""MDBiGAN: Motion Disentangled Bidirectional GAN, in one file that imports only torch.

A video X = x(1..T) is split into one content code z_C and per-frame motion codes z_M(1..T):
E: x(t) -> z_M(t); E_C: (X, z_M) -> z_C; G: (z_C, z_M) -> X; the prior over z_M is a GRU with
linear feedback (kernels/); D_I and D_V score BiGAN pairs, real (x, E(x)) against fake (G(z), z).
Two families implement E, E_C and G behind one interface, and Config.structured picks one, once:
the paper's conv nets, or a where/what split (E reads where the object is, E_C reads glimpses
there, G places one canvas per video). Frames are grayscale or colour (Config.channels). The
model, the paper and what differs: docs/model.md.

Usage:
    from mdbigan import Config, MDBiGAN
    model = MDBiGAN(Config(structured=True))    # or MDBiGAN.from_checkpoint("pretrained/structured32.pt")
    z_c, z_m = model.sample(8)                  # [8, dim_z_c], [8, T, dim_z_m]
    z_c, z_m = model.sample(8, frames=100)      # codes for longer videos: the GRU rolls on
    videos = model.generate(z_c, z_m)           # [8, T, C, S, S] in [0, 1]
    z_m, z_c = model.encode_motion(videos), model.encode_content(videos)
    d_loss, d_logs = model.d_loss(real_videos)  # discriminator step
    g_loss, g_logs = model.eg_loss(real_videos) # encoder + generator (+ prior) step
"""
import math
import os
import warnings
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

CHECKPOINT_VERSION = 5  # bumped when a checkpoint of an older model no longer loads


@dataclass(frozen=True)
class Config:
    frames: int = 20            # T, frames per video (paper: 20)
    size: int = 64              # S, frames are S x S; a power of two >= 16
    channels: int = 1           # C, 1 (grayscale) or 3 (RGB)
    dim_z_m: int = 16           # motion code per frame (paper: 16)
    dim_z_c: int = 64           # content code per video (paper: 64)
    dim_eps: int = 16           # size of the GRU input eps / feedback e(t)
    ch: int = 64                # base channel count of every conv stack (doubles per level)
    ch_max: int = 256           # cap on channels per level
    content_ch: int = 0         # conv family: E_C's and G's base channel count (their cap scaled
                                # alike); 0: ch. They read and draw every colour of the object; E
                                # (every frame) and the discriminators keep ch
    d_hidden: int = 256         # width of the discriminators' feature and joint layers
    loss: str = "hinge"         # "hinge" (BigBiGAN) or "bce" (non-saturating, as the authors)
    unary: bool = True          # BigBiGAN unary scores for x alone and z alone
    d_dropout: float = 0.2      # dropout in the discriminators' heads (ALI)
    image_frames: int = 4       # frames per video that D_I scores, at random steps, real and fake
    adv_weight: float = 1.0     # weight of the adversarial terms in the E/G loss
    adv_warmup: int = 0         # training steps over which that weight grows from 0 (0: none)
    recon_weight: float = 1.0   # MSE of G(E_C(X), E(X)) vs X
    recon_warmup: int = 0       # training steps over which that MSE spreads from the middle frame
                                # to every frame (0: every frame from the start)
    recon_scales: int = 1       # that MSE summed over this many scales, each frame average-pooled
                                # 2x more at each: a small region's colour (a character's trousers)
                                # weighs more than its few pixels, and a shift too far off for thin
                                # strokes to overlap still shows at a coarse scale
    latent_weight: float = 1.0  # L1 of E(G(z)) vs z_M and E_C(G(z)) vs z_C
    swap_weight: float = 0.0    # L1 of E(G(z_C of video b, z_M of video a)) vs z_M of a: E reads
                                # the same motion whatever the content that moves (warmed up
                                # with the adversarial weight)
    content_swap_weight: float = 0.0  # E_C reads back the content of the same swapped videos,
                                # normalised by z_C's spread: E_C then cannot read the motion
                                # (C-DSVAE's content invariance, made with G's swaps)
    swap_trains_g: bool = False # E's swap cycle trains G too: G must draw from z_M what E reads
                                # as the motion (a pose, a facing), not from z_C
    swap_g_weight: float = 0.0  # the swap cycle once more, training G alone against E as it is
                                # (E's weights held): G must draw what E reads of z_M; E, whose
                                # own cycle can shrink its code, is not pulled by it
    decorrelate_weight: float = 0.0  # mean squared correlation, over the batch, of z_C's numbers
                                # with z_M's (all frames): the priors' independence of the two
                                # codes, imposed on E's and E_C's codes of real videos
    independence_weight: float = 0.0  # E_C against a critic that tells a video's own (z_C, z_M)
                                # from its z_C beside another video's z_M (FactorVAE's density-
                                # ratio trick; DRNET's adversary, turned on z_C): what E reads as
                                # the motion (a facing, an action) cannot stay in z_C, and G must
                                # draw it from z_M; trains E_C alone
    independence_codes: str = "real"  # the z_M the critic and dependence_weight's measure set beside
                                # z_C: "real", E's reading of the video; "swap", E's reading of
                                # G(z_C of another video, z_M): the same motion with another
                                # video's look, so that what z_M holds of the look is not what
                                # the critic asks E_C to drop
    dependence_weight: float = 0.0  # CKA (normalised HSIC) between z_C under a linear kernel and
                                # z_M (all frames) under a Gaussian one, on E_C alone: no linear
                                # read of z_C may follow any smooth function of the motion, the
                                # dependence a linear probe finds and a batch critic misses
    dependence_memory: float = 0.0  # > 0: the dependence term measured over many batches instead,
                                # and whitened: how much of random Fourier features of z_M (a
                                # Gaussian kernel) a linear read of z_C explains, z_C's covariance
                                # and cross-covariance kept as running averages with this decay.
                                # What a linear probe reads in a direction of z_C of little
                                # variance, a batch measure or critic weighs by that variance
    leak_weight: float = 0.0    # the whitened measure of dependence_memory (which it needs) the
                                # other way, training E: how much of z_C a linear read of E's code
                                # explains; what z_M holds of the look, E must drop
    colour_jitter: float = 0.0  # E reads, in training, each video with its channels shuffled and
                                # scaled by gains in [1 - j, 1 + j]: what a frame's colours say
                                # (which shirt, which hair) cannot reach z_M (C-DSVAE's motion-
                                # preserving augmentation); G must take the colours from z_C
    colour_mix: bool = False    # colour_jitter mixes the channels by a random matrix per video
                                # (each channel a random blend of all three) instead of shuffling
                                # them: which part is lighter than which (skin against shirt)
                                # changes too
    lr: float = 2e-4            # Adam learning rate of every part
    beta1: float = 0.5          # Adam betas (authors: 0.5, 0.999)
    beta2: float = 0.999
    sampler_backend: str = "auto"  # gru_feedback backend: "auto", "triton" or "torch"
    structured: bool = False    # the where/what family instead of the paper's conv nets
    centre_weight: float = 1.0  # structured: (canvas centre of mass - its centre)^2 in frame pixels
    anchor_weight: float = 1.0  # structured: (where E puts a frame's digit - its ink's centre of
                                # mass)^2 in frame pixels
    sampler_hidden: int = 0     # GRU state size; 0: dim_z_m and z_M(t) = h(t), as the paper
    prior_weight: float = 0.0   # fit the motion prior to E's code paths as a sequence VAE's decoder
    prior_sigma: float = 0.05   # the path fit's Gaussian std, in z_M units (~1 px at first)
    prior_components: int = 0   # > 0: z_C and eps are drawn from mixtures fitted after training to
                                # E_C's codes and q's means (fit_priors); N(0, I) until then
    prior_temperature: float = 1.0  # scales the fitted mixtures' spread when sampling (< 1: cleaner)
    motion_noise: float = 0.0   # std of Gaussian noise on z_M when rebuilding: a narrow code
    centre_motion: bool = False # conv family: E's codes are centred over each video before the
                                # tanh, so a per-video constant (which digit) cannot pass (DBSE)
    warp: bool = False          # conv family: G moves one picture per video (drawn from z_C) along
                                # a flow field (from z_M) instead of drawing each frame from both
    content_frame: str = "all"  # conv family: E_C reads "all" frames (a mean over time) or only the
                                # "middle" one (DBSE's content from one frame)
    flow_size: int = 4          # warp: the flow field's grid of n x n vectors, bilinearly spread
                                # over the frame (n >= 2: any affine motion is exact)
    pose_picture: bool = False  # warp: each frame's picture is drawn from z_C and that frame's z_M
                                # (a pose the flow cannot make: a character turned round, an arm
                                # raised), then moved by the flow; its z_M weights start at 0, so
                                # the flow first learns what a flow can do

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"Config.{msg}")
        need(self.size >= 16 and not self.size & (self.size - 1),
             f"size must be a power of two >= 16, got {self.size}")
        need(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        need(self.flow_size >= 2, f"flow_size must be >= 2, got {self.flow_size}")
        need(1 <= self.recon_scales <= _levels(self.size) + 1,
             f"recon_scales must be in 1..{_levels(self.size) + 1} at size {self.size} (down to 4x4), "
             f"got {self.recon_scales}")
        need(self.content_ch >= 0, f"content_ch must be >= 0 (0: ch), got {self.content_ch}")
        need(self.leak_weight == 0 or self.dependence_memory > 0,
             f"leak_weight needs dependence_memory > 0 (the measure's decay), got {self.dependence_memory}")
        for k in ("frames", "dim_z_m", "dim_z_c", "dim_eps", "ch", "ch_max", "d_hidden", "image_frames"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("lr", "prior_sigma"):
            need(getattr(self, k) > 0, f"{k} must be > 0, got {getattr(self, k)}")
        for k in ("adv_weight", "adv_warmup", "recon_weight", "recon_warmup", "latent_weight",
                  "swap_weight", "content_swap_weight", "swap_g_weight", "decorrelate_weight",
                  "independence_weight", "dependence_weight", "leak_weight",
                  "colour_jitter", "centre_weight", "anchor_weight", "prior_weight", "sampler_hidden",
                  "prior_components", "prior_temperature", "motion_noise"):
            need(getattr(self, k) >= 0, f"{k} must be >= 0, got {getattr(self, k)}")
        for k in ("beta1", "beta2", "d_dropout", "dependence_memory"):
            need(0 <= getattr(self, k) < 1, f"{k} must be in [0, 1), got {getattr(self, k)}")
        for k, allowed in (("loss", ("hinge", "bce")), ("content_frame", ("all", "middle")),
                           ("independence_codes", ("real", "swap")),
                           ("sampler_backend", ("auto", "triton", "torch"))):
            need(getattr(self, k) in allowed, f"{k} must be one of {allowed}, got {getattr(self, k)!r}")
        return self

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown Config fields {sorted(unknown)}: checkpoint from another version?")
        return cls(**d).validate()


def load_checkpoint(path, device="cpu"):
    """A train.py checkpoint (a file, or the run folder holding ckpt.pt) or an inference file
    (pretrained/*.pt, a run's model.pt) as a dict; ValueError with a one-line message if it is
    missing, corrupt or of another format."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many kinds for a bad file
        # (torch's own text advises weights_only=False, which would run the file's code)
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}); "
                         "use another one or start afresh") from None
    if not isinstance(ck, dict) or "config" not in ck or not {"model", "ema"} & set(ck):
        raise ValueError(f"checkpoint {path} holds no MDBiGAN model and config: not an MDBiGAN "
                         "checkpoint")
    if ck.get("version") != CHECKPOINT_VERSION:
        age = "an older" if ck.get("version", 1) < CHECKPOINT_VERSION else "a newer"
        raise ValueError(f"checkpoint {path} was written by {age} mdbigan.py (format "
                         f"{ck.get('version', 1)}, this one reads {CHECKPOINT_VERSION}): train "
                         "again, or use the commit that wrote it")
    return ck


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


_said_no_kernels = False


def _gru_feedback(*args, backend="auto"):
    global _said_no_kernels
    try:  # imported lazily so that this file works on its own
        from kernels import gru_feedback
    except ImportError:
        if not _said_no_kernels:
            _said_no_kernels = True
            warnings.warn("mdbigan: kernels/ is not importable beside mdbigan.py, so the motion "
                          "prior runs as the plain PyTorch loop (the same math; only slower on a GPU)",
                          stacklevel=3)
        return gru_feedback_torch(*args)
    return gru_feedback(*args, backend=backend)


def sampler_backend(cfg, device):
    """What runs the motion prior on `device`, in words, for a start-up line."""
    try:
        from kernels import backend_for
    except ImportError:
        return "PyTorch loop (kernels/ not importable)"
    if cfg.sampler_backend != "auto":
        return f"sampler_backend={cfg.sampler_backend!r}"
    return backend_for(torch.device(device), cfg.sampler_hidden or cfg.dim_z_m)[1]


# ---------------------------------------------------------------- shared building blocks

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
        layers += [nn.utils.parametrizations.spectral_norm(conv) if sn else conv, nn.LeakyReLU(0.2)]
        c = c_out
    return nn.Sequential(*layers), c


def _norm(c):
    # GroupNorm, not BatchNorm: G then behaves the same in train and eval mode, at any batch
    return nn.GroupNorm(min(8, c // 2) or 1, c)


class UpConv(nn.Module):
    """Code -> image of `channels` (default cfg.channels): linear to base x base, then transposed
    convs doubling `levels` times. Ends in tanh ([-1, 1], frames) or sigmoid ([0, 1], a canvas that
    starts black)."""

    def __init__(self, cfg, dim_in, levels, base=4, out="tanh", channels=None):
        super().__init__()
        chans = [min(cfg.ch * 2 ** i, cfg.ch_max) for i in reversed(range(levels))]
        self.fc = nn.Linear(dim_in, chans[0] * base * base)
        layers = [_norm(chans[0]), nn.ReLU()]
        for c_in, c_out in zip(chans, chans[1:] + [None]):
            if c_out is None:
                layers += [nn.ConvTranspose2d(c_in, channels or cfg.channels, 4, 2, 1),
                           nn.Tanh() if out == "tanh" else nn.Sigmoid()]
            else:
                layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), _norm(c_out), nn.ReLU()]
        self.net, self.shape = nn.Sequential(*layers), (chans[0], base, base)
        if out == "sigmoid":   # black, as the frames' background, not 0.5 grey
            nn.init.constant_(layers[-2].bias, -4.0)

    def forward(self, z):                                       # z: (N, dim_in)
        return self.net(self.fc(z).view(-1, *self.shape))      # (N, C, base * 2**levels, ...)


class JointDiscriminator(nn.Module):
    """BiGAN discriminator, spectrally normalised: image features, code features, a joint head
    and two unary heads."""

    def __init__(self, cfg, dim_code, video):
        super().__init__()
        h, p = cfg.d_hidden, cfg.d_dropout
        sn = nn.utils.parametrizations.spectral_norm
        self.convs, c = conv_stack(cfg, cfg.channels, sn=True, dims=3 if video else 2)
        t_out = cfg.frames if video else 1
        for _ in range(_levels(cfg.size) if video else 0):
            t_out = (t_out - 1) // 2 + 1                        # the 3-D convs' stride in time
        act = lambda: [nn.LeakyReLU(0.2), nn.Dropout(p)]
        self.f_x = nn.Sequential(nn.Flatten(), sn(nn.Linear(c * 16 * t_out, h)), *act())
        self.f_z = nn.Sequential(sn(nn.Linear(dim_code, h)), *act(), sn(nn.Linear(h, h)), *act())
        self.joint = nn.Sequential(sn(nn.Linear(2 * h, h)), *act(), sn(nn.Linear(h, 1)))
        self.s_x, self.s_z = sn(nn.Linear(h, 1)), sn(nn.Linear(h, 1))

    def forward(self, x, code):
        """x: (N, C, S, S) or (N, C, T, S, S); code: (N, dim_code). Returns [joint, x, z] scores."""
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
        self.backend = cfg.sampler_backend

    def forward(self, eps, steps):                              # eps: (B, dim_eps)
        c = self.cell
        eps = eps.to(c.weight_hh.dtype)          # under autocast q's eps is bf16: the recurrence is not
        h = _gru_feedback(eps, c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh, self.w_m.weight,
                          steps, backend=self.backend)          # (B, T, H)
        return h if self.readout is None else torch.tanh(self.readout(h))   # (B, T, dim_z_m)


# ---------------------------------------------------------------- the paper's family: conv E, E_C, G
# Every family's modules share one interface (x, videos in [-1, 1] as (B, T, C, S, S)):
#   E(x) -> z_M (B, T, dim_z_m) in [-1, 1];  E_C(x, z_M) -> z_C (B, dim_z_c);  G(z_C, z_M) -> x;
#   E.penalties(x, z_M) -> {name: weighted loss term} the family puts on E's reading of real x;
#   G.reconstruct(z_C, z_M) -> (x, {name: weighted loss term}): G's frames of real codes and the
#   terms the family puts on them, from one drawing.

class ConvEncoder(nn.Module):
    """E or E_C of the paper: conv stack per frame to 4x4, a linear layer; E_C means over time,
    or with cfg.content_frame = "middle" reads the middle frame alone (DBSE's content from one
    frame: for a warp G, a sharp picture at the pose where the centred z_M is about zero).
    With cfg.centre_motion, E's codes before the tanh are centred over each video: z_M then says
    how a frame differs from the video's other frames (DBSE's subtraction of the mean, Berman et
    al., ICML 2024), and what is constant over a video, the object's look, has no way into it."""

    def __init__(self, cfg, dim_out, pool_time):
        super().__init__()
        self.convs, c = conv_stack(cfg, cfg.channels)
        self.fc = nn.Linear(c * 16, dim_out)
        self.pool_time = pool_time
        self.centre = cfg.centre_motion and not pool_time
        self.middle = pool_time and cfg.content_frame == "middle"

    def forward(self, x, z_m=None):                             # z_m: unused, the interface's
        if self.middle:
            x = x[:, x.shape[1] // 2][:, None]
        B, T = x.shape[:2]
        h = self.convs(x.flatten(0, 1)).flatten(1)             # (B*T, c*16)
        if self.pool_time:
            return self.fc(h.view(B, T, -1).mean(1))            # (B, dim_out)
        a = self.fc(h).view(B, T, -1)
        if self.centre:
            a = a - a.mean(1, keepdim=True)
        return torch.tanh(a)                                    # (B, T, dim_out), the GRU's range

    def penalties(self, x, z_m):
        return {}


class ConvGenerator(nn.Module):
    """G of the paper: each frame from the concatenated (z_C, z_M(t)) by transposed convs."""

    def __init__(self, cfg):
        super().__init__()
        self.net = UpConv(cfg, cfg.dim_z_c + cfg.dim_z_m, _levels(cfg.size))
        self.shape = (cfg.channels, cfg.size, cfg.size)

    def forward(self, z_c, z_m):                                # (B, dim_z_c), (B, T, dim_z_m)
        B, T = z_m.shape[:2]                                    # any T: G works frame by frame
        z = torch.cat([z_c[:, None].expand(B, T, z_c.shape[1]), z_m], 2)   # (B, T, dz_c + dz_m)
        return self.net(z.flatten(0, 1)).view(B, T, *self.shape)

    def reconstruct(self, z_c, z_m):
        return self(z_c, z_m), {}


class WarpGenerator(nn.Module):
    """G as a deformation of one picture per video: z_C -> the picture, by transposed convs;
    z_M(t) -> an n x n grid of flow vectors, bilinearly spread over the frame; frame t = the picture
    resampled along that flow (Deforming Autoencoders, Shu et al. 2018; FTGAN's flow and texture,
    Ohnishi et al. 2018). A flow can move, turn, zoom or bend what the picture holds, but z_M only
    says where each pixel comes from: what the object looks like has one place to live, z_C."""

    def __init__(self, cfg):
        super().__init__()
        self.pose = cfg.pose_picture
        self.draw = UpConv(cfg, cfg.dim_z_c + (cfg.dim_z_m if self.pose else 0), _levels(cfg.size))
        if self.pose:   # the picture starts as z_C's alone: the flow learns to move it first
            nn.init.zeros_(self.draw.fc.weight[:, cfg.dim_z_c:])
        n = cfg.flow_size
        self.flow = nn.Sequential(nn.Linear(cfg.dim_z_m, cfg.d_hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(cfg.d_hidden, 2 * n * n))
        nn.init.normal_(self.flow[-1].weight, std=1e-3)         # about the identity warp at first
        nn.init.zeros_(self.flow[-1].bias)
        self.n, self.size, self.draw_shape = n, cfg.size, (cfg.channels, cfg.size, cfg.size)
        identity = F.affine_grid(torch.eye(2, 3)[None], (1, 1, cfg.size, cfg.size), align_corners=False)
        self.register_buffer("identity", identity, persistent=False)       # (1, S, S, 2)

    def pictures(self, z_c, z_m=None):
        """z_c (B, dim_z_c) -> one picture per video (B, C, S, S) in [-1, 1]; with pose_picture,
        z_m (B, T, dim_z_m) too -> one picture per frame (B, T, C, S, S)."""
        if not self.pose:
            return self.draw(z_c)
        B, T = z_m.shape[:2]
        z = torch.cat([z_c[:, None].expand(B, T, z_c.shape[1]), z_m], 2)
        return self.draw(z.flatten(0, 1)).view(B, T, *self.draw_shape)

    def sampling_grid(self, z_m):
        """z_m (N, dim_z_m) -> (N, S, S, 2) grid_sample coordinates: the identity plus the flow."""
        f = self.flow(z_m).float().view(-1, 2, self.n, self.n)
        # align_corners=True: the n x n vectors sit on the corner pixels and evenly between, so a
        # linear field (a shift, turn or zoom) is spread exactly
        f = F.interpolate(f, size=(self.size, self.size), mode="bilinear", align_corners=True)
        return self.identity + f.permute(0, 2, 3, 1)

    def forward(self, z_c, z_m):                                # (B, dim_z_c), (B, T, dim_z_m)
        return self._warp(self.pictures(z_c, z_m), z_m)         # any T: G works frame by frame

    def reconstruct(self, z_c, z_m):
        return self(z_c, z_m), {}

    def _warp(self, picture, z_m):          # (B, C, S, S) or (B, T, C, S, S), (B, T, dim_z_m)
        B, T = z_m.shape[:2]
        if picture.dim() == 4:
            picture = picture[:, None].expand(B, T, *picture.shape[1:])
        # fp32 even under autocast, as the where/what family's geometry; shifted to [0, 2] so that
        # what comes in from outside the picture is black
        pic = picture.float().flatten(0, 1) + 1
        out = F.grid_sample(pic, self.sampling_grid(z_m.flatten(0, 1)), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        return (out - 1).view(B, T, *picture.shape[2:])        # (B, T, C, S, S)


def conv_family(cfg):
    """(E, E_C, G) of the paper, E_C as the paper's E with a mean over time or the middle frame
    (beyond the paper); with cfg.warp, G deforms one picture per video (WarpGenerator)."""
    wide = replace(cfg, ch=cfg.content_ch, ch_max=cfg.ch_max * cfg.content_ch // cfg.ch) if cfg.content_ch else cfg
    return (ConvEncoder(cfg, cfg.dim_z_m, pool_time=False), ConvEncoder(wide, cfg.dim_z_c, pool_time=True),
            WarpGenerator(wide) if cfg.warp else ConvGenerator(wide))


# ---------------------------------------------------------------- the where/what family
# E reads only where the object is, through a 2-number bottleneck, so z_M cannot carry which
# object it is (as DDPAE and AIR do for moving digits); E_C reads object-centred glimpses at the
# pose that z_M gives; G draws one canvas per video from z_C and places it at that pose, at whole
# pixels on black as MotionMNIST is made. One object, translation only. In colour, the ink's mass
# is its luminance; what counts as ink, and where E first looks, its brightest channel.
GLIMPSE = 0.625  # canvas / glimpse width as a fraction of the frame (a 28/64 digit plus margin)
DIGIT = 28 / 64  # a digit's width as a fraction of the frame, as data.py renders it
INK = 0.25       # canvas pixels below this are background (lower left a halo the edge cut)
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601: an RGB pixel's luminance, its ink's mass


def grid(pose, size, inverse):
    """(N, size, size, 2) grid_sample coordinates (align_corners=False) of a translation by pose
    (N, 2) and a scaling by GLIMPSE: F.affine_grid's result without its batched matrix product.
    inverse: frame -> canvas coordinates, to place a canvas."""
    c = (torch.arange(size, device=pose.device, dtype=pose.dtype) * 2 + 1) / size - 1   # centres
    xy = torch.stack(torch.broadcast_tensors(c[None, :], c[:, None]), -1)   # (size, size, 2): x, y
    if inverse:
        return (xy - pose[:, None, None]) / GLIMPSE
    return xy * GLIMPSE + pose[:, None, None]


def place(canvas, pose, size):
    """canvas (N, C, c, c) in [0, 1], pose (N, 2) -> frames (N, C, size, size) in [0, 1]."""
    with torch.autocast(pose.device.type, enabled=False):   # bf16 grids would blur whole pixels
        return F.grid_sample(canvas.float(), grid(pose.float(), size, True), align_corners=False)


def glimpse(frames, pose, size):
    """frames (N, C, S, S) in [-1, 1], pose (N, 2) -> (N, C, size, size) around pose, in [-1, 1]."""
    with torch.autocast(pose.device.type, enabled=False):
        x = (frames.float() + 1) / 2                            # zeros outside the frame: black
        return F.grid_sample(x, grid(pose.float(), size, False), align_corners=False) * 2 - 1


def snap(pose, size):
    """Pose -> the nearest one at which place() copies canvas pixels onto frame pixels (one
    canvas pixel is one frame pixel, 2 / size wide, and GLIMPSE - 1 is a multiple of it)."""
    return torch.round(pose * (size / 2)) / (size / 2)


def ink_offset(image):
    """image (N, 1, n, n) >= 0 -> its centre of mass minus its centre, (x, y) in its pixels (N, 2)."""
    n = image.shape[-1]
    pos = torch.arange(n, device=image.device, dtype=image.dtype) + 0.5 - n / 2
    w = image[:, 0] / (image.sum((1, 2, 3))[:, None, None] + 1e-6)
    return torch.stack([(w.sum(1) * pos).sum(1), (w.sum(2) * pos).sum(1)], 1)


def canvas_offset(canvas, size):
    """canvas (N, 1, c, c) >= 0 -> its centre of mass minus its centre, in frame pixels (N, 2)."""
    return ink_offset(canvas) * (GLIMPSE * size / canvas.shape[-1])


def luminance(image):
    """image (N, C, n, n) -> (N, 1, n, n): itself if grey, its BT.601 luminance if RGB."""
    if image.shape[1] == 1:
        return image
    return (image * image.new_tensor(LUMA)[:, None, None]).sum(1, keepdim=True)


def shown(image):
    """What G shows of image (N, C, n, n) in [0, 1]: pixels whose brightest channel is under INK
    set to 0. Not luminance: a blue digit's full ink has luminance 0.29, and a threshold on it kept
    only its core."""
    return image * (image.amax(1, keepdim=True) > INK)


def ink(image):
    """The ink's mass of image (N, C, n, n) in [0, 1], (N, 1, n, n): the luminance G shows."""
    return luminance(shown(image))


class PoseMap(nn.Linear):
    """z_M(t) -> where G draws and E_C looks, in [-1, 1]^2; starts as the inverse of E's lift."""

    def __init__(self, cfg):
        super().__init__(cfg.dim_z_m, 2)
        with torch.no_grad():
            self.weight.zero_()[:, :2].copy_(torch.eye(2)[:, : cfg.dim_z_m])
            self.bias.zero_()

    def forward(self, z_m):                                     # fp32 even under autocast: a
        with torch.autocast(z_m.device.type, enabled=False):   # bf16 pose is off by ~0.1 px
            return super().forward(z_m.float())


class WhereEncoder(nn.Module):
    """E: frame -> heatmap -> spatial soft-argmax (Finn et al. 2016) -> p(t) in [-1, 1]^2 ->
    z_M(t) = tanh(W p(t) + b). The heatmap's logits are a conv net plus alpha * the frame, so that
    E starts out looking at the ink (the conv net alone never found the digit)."""

    def __init__(self, cfg, pose):
        super().__init__()
        self.pose, self.anchor_weight = pose, cfg.anchor_weight          # pose: shared with G
        c = cfg.ch
        self.net = nn.Sequential(nn.Conv2d(cfg.channels, c, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(c, 1, 3, 1, 1))
        self.alpha = nn.Parameter(torch.tensor(5.0))
        self.lift = nn.Linear(2, cfg.dim_z_m)
        with torch.no_grad():   # [I; 0]: PoseMap starts as its inverse, so G draws where E looks
            self.lift.weight.zero_()[:2].copy_(torch.eye(2)[: cfg.dim_z_m])
            self.lift.bias.zero_()

    def forward(self, x):                                       # x: (B, T, C, S, S) in [-1, 1]
        B, T = x.shape[:2]
        x = x.flatten(0, 1)
        # the brightest channel, not luminance: a blue digit's luminance (0.29 at full ink) left
        # the soft-argmax pulled towards the frame's centre
        h = self.net(x) + self.alpha * F.avg_pool2d(x.amax(1, keepdim=True), 2)   # (B*T, 1, S/2, S/2)
        n = h.shape[-1]
        w = h.flatten(1).softmax(1).view(-1, n, n)
        c = (torch.arange(n, device=x.device, dtype=w.dtype) * 2 + 1) / n - 1   # cell centres
        p = torch.stack([(w.sum(1) * c).sum(1), (w.sum(2) * c).sum(1)], 1)      # (x, y)
        return torch.tanh(self.lift(p)).view(B, T, -1)          # (B, T, dim_z_m)

    def penalties(self, x, z_m):
        """Holds the pose E gives each real frame at the frame's ink centre of mass, the point G's
        centring puts at the pose: else E's reading drifts with a digit's shape, and z_M carries
        the digit."""
        if self.anchor_weight == 0:
            return {}
        S = x.shape[-1]
        centre = ink_offset(ink((x.flatten(0, 1) + 1) / 2)) / (S / 2)        # (B*T, 2), pose units
        err = (self.pose(z_m).flatten(0, 1) - centre) * (S / 2)               # frame pixels
        return {"anchor": self.anchor_weight * err.pow(2).sum(1).mean()}


class GlimpseEncoder(nn.Module):
    """E_C: a glimpse of every frame at the pose of z_M(t), conv stack, mean over time."""

    def __init__(self, cfg, pose):
        super().__init__()
        self.pose, self.size = pose, round(GLIMPSE * cfg.size)  # pose: shared with G
        self.convs, c = conv_stack(cfg, cfg.channels, levels=_levels(cfg.size) - 1)   # -> 5 x 5
        self.fc = nn.Linear(c * 25, cfg.dim_z_c)

    def forward(self, x, z_m):                                  # (B, T, C, S, S), (B, T, dim_z_m)
        B, T = x.shape[:2]
        g = glimpse(x.flatten(0, 1), self.pose(z_m).flatten(0, 1), self.size)
        return self.fc(self.convs(g).flatten(1).view(B, T, -1).mean(1))    # (B, dim_z_c)


class CanvasGenerator(nn.Module):
    """G: z_C -> one canvas per video; frame t = the canvas placed at pose(z_M(t)), at whole pixels
    on black, as the data are made (a sub-pixel shift blurs each frame differently), with the
    smooth rendering's gradient (the crisp one has none inside a pixel: the pose would not learn)."""

    def __init__(self, cfg, pose):
        super().__init__()
        self.draw = UpConv(cfg, cfg.dim_z_c, _levels(cfg.size) - 1, base=5, out="sigmoid", channels=1)
        # in colour, one ink map times one colour per video (a mask times an appearance, as in
        # MONet's decoders): one shape learned for every hue, not one per channel
        self.paint = nn.Linear(cfg.dim_z_c, 3) if cfg.channels == 3 else None
        self.pose, self.size, self.centre_weight = pose, cfg.size, cfg.centre_weight
        self.edge = 1 - round(DIGIT * cfg.size) / cfg.size     # a digit box's centre's limit

    def canvases(self, z_c):
        """z_c (B, dim_z_c) -> canvases (B, C, c, c) in [0, 1]; in colour, a canvas's brightest
        channel is its ink map (the colour is scaled to a brightest channel of 1), so what shown()
        keeps is the ink map's shape in every hue."""
        ink = self.draw(z_c)
        if self.paint is None:
            return ink
        colour = torch.sigmoid(self.paint(z_c))
        return ink * (colour / colour.amax(1, keepdim=True))[:, :, None, None]

    def forward(self, z_c, z_m):                                # (B, dim_z_c), (B, T, dim_z_m)
        return self._place(self.canvases(z_c), z_m)             # any T: one canvas per video

    def reconstruct(self, z_c, z_m):
        """Frames and the centring term of one drawing of the canvases."""
        canvas = self.canvases(z_c)
        terms = {}
        if self.centre_weight > 0:
            # the shown ink's centre of mass at the canvas centre: else where a digit sits in its
            # canvas is a free convention per digit, and z_M carries the digit through it
            off = canvas_offset(ink(canvas), self.size)
            terms["centre"] = self.centre_weight * off.pow(2).sum(1).mean()
        return self._place(canvas, z_m), terms

    def _place(self, canvas, z_m):                              # (B, C, c, c), (B, T, dim_z_m)
        B, T = z_m.shape[:2]
        # the ink's centre of mass stays where the data's digits' stays: data.py clips a digit's
        # box to the frame, and an MNIST digit's centre of mass is its box's centre
        px = self.size / 2                                      # frame pixels per pose unit
        off = canvas_offset(ink(canvas), self.size).detach()[:, None] / px      # (B, 1, 2)
        lo, hi = -self.edge - off, self.edge - off
        pose = torch.minimum(torch.maximum(self.pose(z_m), lo), hi)                  # (B, T, 2)
        # whole pixels, rounded inwards at the limits
        snapped = torch.minimum(torch.maximum(snap(pose, self.size), torch.ceil(lo * px) / px),
                                torch.floor(hi * px) / px)
        canvas = canvas[:, None].expand(B, T, *canvas.shape[1:]).flatten(0, 1)
        smooth = place(canvas, pose.flatten(0, 1), self.size)
        crisp = place(shown(canvas), snapped.flatten(0, 1).detach(), self.size)
        frames = smooth + (crisp - smooth).detach()             # straight-through
        return (frames * 2 - 1).view(B, T, *frames.shape[1:])  # (B, T, C, S, S)


def where_what_family(cfg):
    """(E, E_C, G) of the where/what split; all three share one PoseMap."""
    pose = PoseMap(cfg)
    return WhereEncoder(cfg, pose), GlimpseEncoder(cfg, pose), CanvasGenerator(cfg, pose)


class WhitenedDependence(nn.Module):
    """How much a linear read of one code (the reader, (B, n)) explains of random Fourier features
    (Rahimi & Recht, NeurIPS 2007) of another (the target, (B, m); a Gaussian kernel of bandwidth
    sqrt(m) / 2), each standardised over the batch: the R^2 tr(C' S^-1 C) / tr(S_f), S the reader's
    covariance, C the cross-covariance, S_f the features', all running averages over about
    (1 + decay) / (1 - decay) batches (a linear CCA of the reader against a kernel of the target).
    Whitened, as a linear probe is: a code's spread can span orders of magnitude over its
    directions, and what it should not hold may show in the narrow ones, which a batch measure
    weighs by their variance. The gradient, to the reader alone, is the R^2's through this batch's
    moments as if they were the running ones. The moments are not saved: a resumed run measures
    afresh within a few hundred steps."""

    FEATURES = 256

    def __init__(self, n, m, decay, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.decay = decay
        self.register_buffer("w", torch.randn(m, self.FEATURES, generator=g) * 2 / m ** 0.5, persistent=False)
        self.register_buffer("b", 2 * math.pi * torch.rand(self.FEATURES, generator=g), persistent=False)
        self.register_buffer("cov", torch.eye(n), persistent=False)
        self.register_buffer("cross", torch.zeros(n, self.FEATURES), persistent=False)
        self.register_buffer("fvar", torch.ones(()), persistent=False)

    def features(self, target):
        f = (2 / self.FEATURES) ** 0.5 * torch.cos(MDBiGAN._standard(target.float()) @ self.w + self.b)
        return f - f.mean(0)

    @torch.autocast("cuda", enabled=False)   # fp32: a bf16 covariance cannot whiten across three
    @torch.autocast("cpu", enabled=False)    # orders of magnitude
    def forward(self, reader, target):                          # (B, n) with gradients, (B, m)
        a, f = MDBiGAN._standard(reader.float()), self.features(target.detach())
        B, n = a.shape
        cov, cross = a.T @ a / B, a.T @ f / B                   # this batch's moments
        if self.training:
            d = self.decay
            self.cov.mul_(d).add_((1 - d) * cov.detach())
            self.cross.mul_(d).add_((1 - d) * cross.detach())
            self.fvar.mul_(d).add_((1 - d) * f.pow(2).sum() / B)
        s = self.cov + 1e-3 * torch.eye(n, device=a.device)     # standardised: eigenvalues <= n
        w = torch.linalg.solve(s, self.cross)                   # S^-1 C
        value = (self.cross * w).sum() / self.fvar
        push = (2 * (w * cross).sum() - (w @ w.T * cov).sum()) / self.fvar
        return push + (value - push).detach()


class GaussianMixture(nn.Module):
    """A density to draw codes from: k full-covariance Gaussians, fitted after training to the codes
    the encoders produce (ex-post density estimation, Ghosh et al. 2020). Until fitted, all k are
    N(0, I), so drawing from it is drawing from N(0, I)."""

    def __init__(self, k, dim, temperature=1.0):
        super().__init__()
        self.temperature = temperature
        self.register_buffer("weights", torch.full((k,), 1.0 / k))
        self.register_buffer("means", torch.zeros(k, dim))
        self.register_buffer("scale_tril", torch.eye(dim).repeat(k, 1, 1))   # Cholesky factors

    def set(self, weights, means, covariances):
        """Takes a fit (e.g. sklearn's GaussianMixture(covariance_type="full")): [j], [j, D], [j, D, D]
        with j <= k; components past j get weight 0."""
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.means.device)
        w, j = as_t(weights), len(weights)
        self.weights.zero_()[:j] = w / w.sum()
        self.means.zero_()[:j] = as_t(means)
        self.scale_tril.copy_(torch.eye(self.means.shape[1]))
        self.scale_tril[:j] = torch.linalg.cholesky(as_t(covariances))

    def sample(self, n):
        i = torch.multinomial(self.weights, n, replacement=True)
        noise = torch.randn(n, self.means.shape[1], 1, device=self.means.device)
        return self.means[i] + self.temperature * (self.scale_tril[i] @ noise)[..., 0]


# ---------------------------------------------------------------- the model


class MDBiGAN(nn.Module):
    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = cfg = (cfg or Config()).validate()
        self.enc, self.enc_c, self.gen = (where_what_family if cfg.structured else conv_family)(cfg)
        self.sampler = MotionSampler(cfg)
        # q(eps | z_M(1..T)): the sampler is also the decoder of a VAE on E's code paths, so that
        # its paths are ones E produces
        self.prior_enc = nn.Sequential(
            nn.Linear(cfg.frames * cfg.dim_z_m, cfg.d_hidden), nn.LeakyReLU(0.2),
            nn.Linear(cfg.d_hidden, 2 * cfg.dim_eps)) if cfg.prior_weight > 0 else None
        k, t = cfg.prior_components, cfg.prior_temperature   # fitted by train.fit_priors
        self.content_prior = GaussianMixture(k, cfg.dim_z_c, t) if k else None
        self.eps_prior = GaussianMixture(k, cfg.dim_eps, t) if k and self.prior_enc is not None else None
        self.disc_image = JointDiscriminator(cfg, cfg.dim_z_m + cfg.dim_z_c, video=False)  # D_I
        self.disc_video = JointDiscriminator(cfg, cfg.frames * cfg.dim_z_m + cfg.dim_z_c, video=True)
        d = cfg.d_hidden   # the independence critic: (z_C, all of z_M) -> one logit
        self.critic = nn.Sequential(
            nn.Linear(cfg.dim_z_c + cfg.frames * cfg.dim_z_m, d), nn.LeakyReLU(0.2),
            nn.Linear(d, d), nn.LeakyReLU(0.2), nn.Linear(d, 1)) if cfg.independence_weight > 0 else None
        # the whitened dependence measures (dependence_memory): z_M's path from z_C, for E_C; z_C
        # from z_M's path, for E (leak_weight)
        path, memory = cfg.frames * cfg.dim_z_m, cfg.dependence_memory
        self.dependence = (WhitenedDependence(cfg.dim_z_c, path, memory)
                           if cfg.dependence_weight > 0 and memory > 0 else None)
        self.leak = WhitenedDependence(path, cfg.dim_z_c, memory, seed=1) if cfg.leak_weight > 0 else None

    DISCRIMINATORS = ("disc_image", "disc_video", "critic")   # training only: not in inference files

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        """The model of a train.py checkpoint or an inference file (a file, a run folder, or the
        dict load_checkpoint gave), in eval mode: the run's average of the weights where it kept
        one. Inference files hold no discriminators; theirs stay as initialised."""
        ck = path if isinstance(path, dict) else load_checkpoint(path, device)
        model = cls(Config.from_dict(ck["config"]))
        state = ck.get("ema", ck.get("model"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(cls.DISCRIMINATORS)]
        if missing or unexpected:
            where = "" if isinstance(path, dict) else f" {path}"
            raise ValueError(f"checkpoint{where} does not fit its own config (incompatible version?): "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model.to(device).eval()

    def inference_state_dict(self):
        """The state dict without the discriminators: what sampling, encoding and evaluation use."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.DISCRIMINATORS)}

    # ------------------------------------------------------------------ the API
    def _check(self, videos):
        T, C, S = self.cfg.frames, self.cfg.channels, self.cfg.size
        if videos.dim() != 5 or tuple(videos.shape[1:]) != (T, C, S, S):
            raise ValueError(f"videos must be [B, {T}, {C}, {S}, {S}] floats in [0, 1], got "
                             f"{list(videos.shape)}")
        return videos * 2 - 1                                   # the model works in [-1, 1]

    def encode_motion(self, videos):
        """videos [B, T, C, S, S] in [0, 1] -> z_M [B, T, dim_z_m]."""
        return self.enc(self._check(videos))

    def encode_content(self, videos):
        """videos [B, T, C, S, S] in [0, 1] -> z_C [B, dim_z_c]."""
        x = self._check(videos)
        return self.enc_c(x, self.enc(x))

    def sample(self, n, frames=None, device=None):
        """Codes from the priors: z_C [n, dim_z_c] ~ N(0, I) (or the fitted mixture), z_M [n, T,
        dim_z_m] from the GRU, its eps ~ N(0, I) (or the fitted mixture). T is the training
        length unless `frames` says otherwise: the GRU rolls on past it, and G works per frame."""
        device = device or next(self.parameters()).device
        draw = lambda prior, dim: prior.sample(n) if prior is not None else torch.randn(n, dim, device=device)
        z_c = draw(self.content_prior, self.cfg.dim_z_c)
        return z_c, self.sampler(draw(self.eps_prior, self.cfg.dim_eps), frames or self.cfg.frames)

    @torch.no_grad()
    def prior_codes(self, videos):
        """What the fitted priors imitate: (E_C's z_C [B, dim_z_c], q's mean eps of E's path [B, dim_eps]
        or None without prior_enc), for videos [B, T, C, S, S] in [0, 1]."""
        x = self._check(videos)
        z_m = self.enc(x)
        eps = self.prior_enc(z_m.flatten(1)).chunk(2, 1)[0] if self.prior_enc is not None else None
        return self.enc_c(x, z_m), eps

    def generate(self, z_c, z_m):
        """(z_C [B, dim_z_c], z_M [B, T, dim_z_m]) -> videos [B, T, C, S, S] in [0, 1], any T."""
        return (self.gen(z_c, z_m) + 1) / 2

    # ------------------------------------------------------------------ losses
    def _scores(self, x, z_m, z_c, t_idx):
        """D_I on frames t_idx (B, k) and D_V on whole videos; lists of score tensors."""
        b_idx = torch.arange(x.shape[0], device=x.device)[:, None]
        frames = x[b_idx, t_idx].flatten(0, 1)                  # (B*k, C, S, S)
        codes = z_m[b_idx, t_idx].flatten(0, 1)                 # (B*k, dim_z_m)
        codes = torch.cat([codes, z_c.repeat_interleave(t_idx.shape[1], 0)], 1)
        vcode = torch.cat([z_m.flatten(1), z_c], 1)             # (B, T*dim_z_m + dim_z_c)
        return self.disc_image(frames, codes), self.disc_video(x.transpose(1, 2), vcode)

    def _pairs(self, videos):
        """Real pairs (x, E(x), E_C(x)) and fake pairs (G(z), z_M, z_C), in [-1, 1]; t_idx: D_I's
        random steps, the same for real and fake."""
        x = self._check(videos)
        B = x.shape[0]
        z_m_real = self.enc(self._jitter(x) if self.cfg.colour_jitter > 0 else x)
        z_c_real = self.enc_c(x, z_m_real)
        # the training prior is N(0, I); the mixtures fitted after training are for sample() alone
        z_c = torch.randn(B, self.cfg.dim_z_c, device=x.device)
        z_m = self.sampler(torch.randn(B, self.cfg.dim_eps, device=x.device), self.cfg.frames)
        if self.prior_enc is not None:   # the prior is fitted to E's paths alone (prior_fit):
            z_m = z_m.detach()           # the adversarial gradient sent paths off the frame
        x_fake = self.gen(z_c, z_m)
        k = min(self.cfg.image_frames, self.cfg.frames)
        t_idx = torch.rand(B, self.cfg.frames, device=x.device).argsort(1)[:, :k]
        return (x, z_m_real, z_c_real), (x_fake, z_m, z_c), t_idx

    def _jitter(self, x):
        """x (B, T, C, S, S) in [-1, 1] with each video's channels shuffled (colour) and scaled by
        gains in [1 - j, 1 + j]; black stays black, as the frames' background."""
        B, C = x.shape[0], x.shape[2]
        if C > 1 and self.cfg.colour_mix:   # rows sum to 1: black stays black, white grey-ish
            mix = torch.softmax(3 * torch.randn(B, C, C, device=x.device), 2)
            x = torch.einsum("bij,btjhw->btihw", mix, x + 1) - 1
        elif C > 1:
            x = x[torch.arange(B, device=x.device)[:, None], :, torch.rand(B, C, device=x.device).argsort(1)]
            x = x.permute(0, 2, 1, 3, 4)     # advanced indexing put the channel axis second
        j = self.cfg.colour_jitter
        gain = 1 + j * (2 * torch.rand(B, 1, C, 1, 1, device=x.device) - 1)
        return ((x + 1) * gain - 1).clamp(-1, 1)

    def _heads(self, s_real, s_fake):
        """(real, fake) score pairs of D_I and D_V: the joint heads, and the unary ones if on."""
        return [(a, b) for sr, sf in zip(s_real, s_fake)
                for a, b in (zip(sr, sf) if self.cfg.unary else [(sr[0], sf[0])])]

    def d_loss(self, videos):
        """Discriminator loss (D_I + D_V), to minimise w.r.t. their parameters only."""
        with torch.no_grad():      # E, E_C, G and the sampler are fixed in this step
            (x, zm_r, zc_r), (xf, zm_f, zc_f), t_idx = self._pairs(videos)
        heads = self._heads(self._scores(x, zm_r, zc_r, t_idx), self._scores(xf, zm_f, zc_f, t_idx))
        n = len(heads) // 2                                     # D_I's heads, then D_V's
        if self.cfg.loss == "hinge":
            terms = [F.relu(1 - a).mean() + F.relu(1 + b).mean() for a, b in heads]
        else:
            terms = [F.softplus(-a).mean() + F.softplus(b).mean() for a, b in heads]
        d_i, d_v = sum(terms[:n]), sum(terms[n:])
        logs, loss = {"d_i": d_i.detach(), "d_v": d_v.detach()}, d_i + d_v
        if self.critic is not None:
            with torch.no_grad():
                zm_c = self._critic_motion(zm_r, zc_r)
            joint, apart = self._critic_scores(zm_c, zc_r)
            crit = F.softplus(-joint).mean() + F.softplus(apart).mean()
            logs["crit"], loss = crit.detach(), loss + crit
        return loss, logs

    def eg_loss(self, videos, iteration=None):
        """Encoder + generator (+ prior) loss: the adversarial terms with swapped roles, the
        reconstruction, the family's penalties, the latent consistency and the prior fit. Logs
        each term unweighted (a family's penalties carry their own weights). `iteration`, the
        training step, scales the adversarial weight over cfg.adv_warmup steps (None: full)."""
        real, fake, t_idx = self._pairs(videos)
        terms = {"g": (self.adv_scale(iteration) * self.cfg.adv_weight,
                       self._eg_adversarial(real, fake, t_idx))}
        terms.update(self._reconstruction(*real, iteration=iteration))
        if self.cfg.latent_weight > 0:
            terms["lat"] = (self.cfg.latent_weight, self._latent_consistency(*fake))
        swapped = {}   # E's reading of G's swaps, drawn once: the swap cycle's and the critic's
        if self.cfg.swap_weight > 0 or self.cfg.content_swap_weight > 0:
            swap, cswap = self._swap_consistency(*real[1:], out=swapped)
            if self.cfg.swap_weight > 0:
                terms["swap"] = (self.adv_scale(iteration) * self.cfg.swap_weight, swap)
            if self.cfg.content_swap_weight > 0:
                terms["cswap"] = (self.adv_scale(iteration) * self.cfg.content_swap_weight, cswap)
        if self.cfg.swap_g_weight > 0:
            terms["gswap"] = (self.adv_scale(iteration) * self.cfg.swap_g_weight,
                              self._swap_through_g(*real[1:]))
        if self.cfg.decorrelate_weight > 0:
            terms["corr"] = (self.cfg.decorrelate_weight, self._correlation(*real[1:]))
        if self.critic is not None or self.cfg.dependence_weight > 0:
            if self.cfg.independence_codes == "swap" and "read" in swapped:
                zm_c = swapped["read"]
            else:
                with torch.no_grad():
                    zm_c = self._critic_motion(real[1], real[2])
        if self.cfg.dependence_weight > 0:
            dep = (self.dependence(real[2], zm_c.flatten(1)) if self.dependence is not None
                   else self._dependence(zm_c, real[2]))
            terms["dep"] = (self.adv_scale(iteration) * self.cfg.dependence_weight, dep)
        if self.critic is not None:
            joint, apart = self._critic_scores(zm_c, real[2])
            terms["indep"] = (self.adv_scale(iteration) * self.cfg.independence_weight,
                              F.softplus(joint).mean() + F.softplus(-apart).mean())
        if self.leak is not None:                               # E alone: z_C detached
            terms["leak"] = (self.adv_scale(iteration) * self.cfg.leak_weight,
                             self.leak(real[1].flatten(1), real[2].detach()))
        if self.prior_enc is not None:                          # trains the sampler and q only
            terms["prior"] = (self.cfg.prior_weight, self.prior_fit(real[1].detach()))
        total = sum(w * v for w, v in terms.values())
        return total, {k: v.detach() for k, (_, v) in terms.items()}

    def adv_scale(self, iteration):
        """The share of the adversarial and swap weights at this training step: from 0 at the
        start to 1 after cfg.adv_warmup steps: the reconstruction first ties z_M to the frames,
        before the BiGAN pulls E's codes toward the untrained prior's near-constant paths (which
        can stall a warp G at the identity warp) and the swap cycle toward what G draws so far (a
        turn G does not draw yet, E would learn not to read; docs/model.md)."""
        if not self.cfg.adv_warmup or iteration is None:
            return 1.0
        return min(1.0, iteration / self.cfg.adv_warmup)

    def _eg_adversarial(self, real, fake, t_idx):
        heads = self._heads(self._scores(*real, t_idx), self._scores(*fake, t_idx))
        if self.cfg.loss == "hinge":    # BigBiGAN: E and G minimise s(real) - s(fake)
            return sum(a.mean() - b.mean() for a, b in heads)
        return sum(F.softplus(a).mean() + F.softplus(-b).mean() for a, b in heads)   # labels swapped

    def frame_weights(self, iteration, frames, device=None):
        """The reconstruction's weight per frame (frames,), mean 1, at this training step: a
        Gaussian about the middle frame whose width grows from one frame to the whole video over
        cfg.recon_warmup steps, then uniform (coarse-to-fine in time). Added to let a warp G learn
        turns, which it did not; kept because over three seeds it lowered the digit leakage into
        z_M (docs/model.md)."""
        if not self.cfg.recon_warmup or iteration is None or iteration >= self.cfg.recon_warmup:
            return None
        sigma = 1 + frames * (iteration / self.cfg.recon_warmup) ** 2   # narrow for longest
        t = torch.arange(frames, dtype=torch.float32, device=device) - (frames - 1) / 2
        w = torch.exp(-0.5 * (t / sigma) ** 2)
        return w / w.mean()

    def _reconstruction(self, x, z_m, z_c, iteration=None):
        """{name: (weight, term)}: |G(E_C(x), E(x)) - x|^2 (its frames weighed by frame_weights
        while it warms up) and the family's penalties."""
        if self.cfg.motion_noise > 0:   # a narrow code: what G can read of z_M is coarse
            z_m = z_m + self.cfg.motion_noise * torch.randn_like(z_m)
        x_rec, g_terms = self.gen.reconstruct(z_c, z_m)
        terms = {}
        if self.cfg.recon_weight > 0:
            # per pixel, summed over channels: a red digit's ink lies in one channel of three, and
            # a mean over them weighed a colour digit's error a third to two thirds of a grey one's
            err = (x_rec - x).pow(2).sum(2).mean((2, 3))       # (B, T)
            a, b = x_rec.flatten(0, 1), x.flatten(0, 1)
            for _ in range(self.cfg.recon_scales - 1):
                a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
                err = err + (a - b).pow(2).sum(1).mean((1, 2)).view_as(err)
            w = self.frame_weights(iteration, x.shape[1], err.device)   # made where it is used
            terms["rec"] = (self.cfg.recon_weight, (err if w is None else err * w).mean())
        for name, term in {**self.enc.penalties(x, z_m), **g_terms}.items():
            terms[name] = (1.0, term)
        return terms

    def _latent_consistency(self, x_fake, z_m, z_c):
        """|E(G(z)) - z_M| + |E_C(G(z)) - z_C| for codes from the priors. It trains E, E_C and G,
        not the prior (its codes detached, G run again on them): into the sampler this term
        outweighed the adversarial one."""
        z_m, z_c = z_m.detach(), z_c.detach()
        x = self.gen(z_c, z_m)
        z_m_rec = self.enc(x)
        return (z_m_rec - z_m).abs().mean() + (self.enc_c(x, z_m_rec) - z_c).abs().mean()

    def _swap_consistency(self, z_m, z_c, out=None):
        """(|E(x) - z_M^a|, |E_C(x) - z_C^b|^2 / Var z_C) for x = G(z_C^b, z_M^a), real codes, b the
        next video in the batch: swap cycles (the reverse cycle of Jha et al. 2018) on the encoders
        alone, G's swap drawn without gradients (with cfg.swap_trains_g the first trains G too).
        The first makes E read a motion the same whatever content moves (a plain E's small errors
        differ from digit to digit, and a probe reads the digit from them); the second makes E_C
        read a content the same whatever motion it does, so that what G draws from z_M (a pose,
        which way a character faces) cannot stay in z_C. It is divided by z_C's spread over the
        batch, with gradients, as an L1 in z_C would shrink the code, which G's normalisation
        ignores. A dict `out` gets E's reading of the swaps, detached, as "read"."""
        z_m = z_m.detach()
        with torch.set_grad_enabled(self.cfg.swap_trains_g and torch.is_grad_enabled()):
            x = self.gen(z_c.roll(1, 0).detach(), z_m)
        z_m_swap = self.enc(x)
        if out is not None:
            out["read"] = z_m_swap.detach()
        swap = (z_m_swap - z_m).abs().mean()
        if self.cfg.content_swap_weight == 0:
            return swap, None
        c_hat = self.enc_c(x.detach(), z_m_swap.detach())   # E_C alone: through G it would ask G
                                                            # to draw from z_C what E_C reads
        spread = z_c.var(0).mean() + 1e-6
        return swap, (c_hat - z_c.roll(1, 0)).pow(2).mean() / spread

    def _swap_through_g(self, z_m, z_c):
        """|E(G(z_C^b, z_M^a)) - z_M^a| with E's weights held and the codes detached: trains G
        alone, so that what E reads as the motion, G draws from z_M."""
        z_m = z_m.detach()
        x = self.gen(z_c.roll(1, 0).detach(), z_m)
        held = {k: v.detach() for k, v in self.enc.named_parameters()}
        read = torch.func.functional_call(self.enc, held, (x,))
        return (read - z_m).abs().mean()

    def _critic_motion(self, z_m, z_c):
        """The motion codes the critic pairs with z_C (no gradients): E's own, or with
        independence_codes = "swap" E's reading of G(z_C^(a-1), z_M^a), video a's motion drawn with
        the previous video's look."""
        if self.cfg.independence_codes == "real":
            return z_m.detach()
        return self.enc(self.gen(z_c.roll(1, 0), z_m)).detach()

    @staticmethod
    def _dependence(z_m, z_c):
        """CKA of z_C (B, dim_z_c) under a linear kernel against z_M (B, T, dim_z_m) under a
        Gaussian kernel (bandwidth: the median distance), each standardised over the batch: 0
        when no linear function of z_C covaries with any smooth function of z_M over the batch
        (Gretton et al. 2005; Kornblith et al. 2019). A closed form, not a learner: E_C cannot
        move its code where the measure does not look."""
        B = z_c.shape[0]
        a, m = MDBiGAN._standard(z_c.float()), MDBiGAN._standard(z_m.flatten(1).float())
        k = a @ a.T
        d = torch.cdist(m, m).pow(2)
        l = torch.exp(-d / d[~torch.eye(B, dtype=torch.bool, device=d.device)].median().clamp_min(1e-6))
        h = torch.eye(B, device=k.device) - 1.0 / B
        k, l = h @ k @ h, h @ l @ h
        return (k * l).sum() / ((k * k).sum() * (l * l).sum()).sqrt().clamp_min(1e-12)

    def _critic_scores(self, z_m, z_c):
        """The critic's logits for each video's own pair (z_C^a, z_M^a), (B,), and for every pair of
        z_C^b beside z_M^a, b != a, (B * (B - 1),): the first are draws of the codes' joint law,
        the second of the product of its marginals, which the priors are; every pair of the batch,
        not one per video, as a batch of 16 gives the critic too few to learn from. The critic
        learns to tell them apart; E_C, with labels swapped, to make them alike (z_M detached
        there: the critic moves z_C only, so what E reads stays the anchor). With independence_codes
        = "swap", z_M^a was drawn with the look of video a - 1, and that pair is left out too."""
        B = z_c.shape[0]
        # each number standardised over the batch: G's first layer is normalised, so E_C could
        # otherwise blind the critic by shrinking z_C (it did, to a tenth of its spread)
        z_c, z = self._standard(z_c.float()), self._standard(z_m.flatten(1).float())
        pairs = torch.cat([z_c[:, None].expand(B, B, -1), z[None].expand(B, B, -1)], 2)
        s = self.critic(pairs).squeeze(2)                       # s[b, a]: z_C^b beside z_M^a
        eye = torch.eye(B, dtype=torch.bool, device=s.device)
        apart = ~eye
        if self.cfg.independence_codes == "swap":   # z_M^a carries the look of video a - 1
            apart = apart & ~eye.roll(-1, 0)
        return s[eye], s[apart]

    @staticmethod
    def _standard(a):
        """a (B, D) with each column made zero-mean and unit-variance over the batch."""
        a = a - a.mean(0)
        return a / (a.pow(2).mean(0).sqrt() + 1e-4)

    @staticmethod
    def _correlation(z_m, z_c):
        """Mean squared correlation over the batch between each number of z_C (B, dim_z_c) and each
        of z_M (B, T, dim_z_m): 0 when no linear read of one code tells anything of the other (a
        linear probe of the motion from z_C then reads little); about 1 / B for independent codes."""
        standard = MDBiGAN._standard
        corr = standard(z_c.float()).T @ standard(z_m.flatten(1).float()) / z_c.shape[0]
        return corr.pow(2).mean()

    def prior_fit(self, path):
        """Negative ELBO of code paths [B, T, dim_z_m] under the sampler as a VAE's decoder,
        eps ~ q(eps | path) = N(mu, sigma^2) from prior_enc, p(eps) = N(0, I); nats per number."""
        mu, logvar = self.prior_enc(path.flatten(1)).chunk(2, 1)
        logvar = logvar.clamp(-12, 4)
        eps = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        fit = (self.sampler(eps, path.shape[1]) - path).pow(2).sum((1, 2)) / (2 * self.cfg.prior_sigma ** 2)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (fit + kl).mean() / path[0].numel()

    def forward(self, videos, step, iteration=None):
        """step "d" -> d_loss, "eg" -> eg_loss; a forward() so that DDP can wrap the model."""
        if step == "d":
            return self.d_loss(videos)
        if step == "eg":
            return self.eg_loss(videos, iteration)
        raise ValueError(f"step must be 'd' or 'eg', got {step!r}")

    def d_parameters(self):
        """D_I's, D_V's and the critics' parameters."""
        return [p for name in self.DISCRIMINATORS if getattr(self, name) is not None
                for p in getattr(self, name).parameters()]

    def eg_parameters(self):
        """Every other parameter: E, E_C, G, the sampler and q (each once, shared ones too)."""
        d = {id(p) for p in self.d_parameters()}
        return [p for p in self.parameters() if id(p) not in d]
