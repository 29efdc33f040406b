"""train.py: a tiny run writes a checkpoint and a log; resume is exact and keeps the run's own
settings; errors are clear; SIGINT and NaN are handled; DDP with two ranks; the GPU step.

    python -m pytest tests/test_train.py -q
"""
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import train
from mdbigan import Config, MDBiGAN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(out, mnist, *extra, preset=("--preset", "tiny")):
    return train.main([*preset, "--device", "cpu", "--out-dir", str(out), "--mnist-dir", mnist,
                       "--log-every", "1", *extra])


def test_tiny_run_writes_checkpoint_and_log(tmp_path, mnist_dir):
    assert run(tmp_path, mnist_dir, "--max-steps", "3") == 0
    ck = train.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ck["step"] == 3 and ck["config"]["size"] == 16
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 3 and re.match(r"step 3 \| d_i [\d.]+ \| d_v [\d.]+ \| g -?[\d.]+ .*videos/s", lines[-1])
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["step"] == 3


def test_generic32_preset_trains_and_its_model_generates(tmp_path, mnist_dir):
    """The generic CPU preset (the warp G with a picture per frame, centred codes, the critic on
    E_C against swapped motion codes, the warm-up) takes steps, writes its inference file, and that file's model draws videos
    of its shape."""
    assert run(tmp_path, mnist_dir, "--max-steps", "2", preset=("--preset", "generic32")) == 0
    model = MDBiGAN.from_checkpoint(str(tmp_path / "model.pt"))
    assert model.cfg.warp and model.cfg.centre_motion and not model.cfg.structured
    assert model.cfg.pose_picture and model.cfg.independence_weight > 0 and model.cfg.content_ch > model.cfg.ch
    assert model.cfg.independence_codes == "swap" and model.cfg.recon_scales == 3
    with torch.no_grad():
        v = model.generate(*model.sample(2))
    assert v.shape == (2, 20, 1, 32, 32) and torch.isfinite(v).all()


def test_tiny_run_writes_pictures(tmp_path, mnist_dir):
    assert run(tmp_path, mnist_dir, "--max-steps", "2") == 0
    for name in ("losses.png", "samples_000002.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra", [(), ("--set", "warp=true", "--set", "centre_motion=true",
                                          "--set", "adv_warmup=3")], ids=["tiny", "warp-warmup"])
def test_resume_gives_identical_weights(tmp_path, mnist_dir, extra):
    """A run stopped at step 2 and resumed to 4 ends where an unbroken run does, the adversarial
    warm-up included (its weight follows the step, which the checkpoint keeps)."""
    assert run(tmp_path / "a", mnist_dir, "--max-steps", "4", *extra) == 0
    assert run(tmp_path / "b", mnist_dir, "--max-steps", "2", *extra) == 0
    assert run(tmp_path / "b", mnist_dir, "--max-steps", "4", "--resume") == 0
    a = train.load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))
    b = train.load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))
    assert b["step"] == 4
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_resume_from_a_named_checkpoint_continues_in_its_folder(tmp_path, mnist_dir, monkeypatch):
    """--resume RUN/ckpt.pt without --out-dir writes into RUN, not into runs/PRESET."""
    assert run(tmp_path / "a", mnist_dir, "--max-steps", "2") == 0
    monkeypatch.chdir(tmp_path)
    assert train.main(["--resume", str(tmp_path / "a" / "ckpt.pt"), "--device", "cpu",
                       "--max-steps", "3", "--log-every", "1"]) == 0
    assert train.load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))["step"] == 3
    assert not (tmp_path / "runs").exists()


def test_resume_keeps_the_runs_own_settings(tmp_path, mnist_dir):
    """A run with a non-default preset, variant, batch size, seed and --set, resumed with no
    flags but --resume: it continues with its own settings, not the command line's defaults."""
    settings = ("--variant", "hard", "--batch-size", "3", "--seed", "5", "--set", "latent_weight=0.5")
    assert run(tmp_path / "a", mnist_dir, "--max-steps", "4", *settings) == 0
    assert run(tmp_path / "b", mnist_dir, "--max-steps", "2", *settings) == 0
    assert train.main(["--resume", "--out-dir", str(tmp_path / "b"), "--device", "cpu",
                       "--max-steps", "4"]) == 0
    a = train.load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))
    b = train.load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))
    assert b["args"] == a["args"] and b["args"]["preset"] == "tiny" and b["args"]["variant"] == "hard"
    assert b["config"]["latent_weight"] == 0.5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("flag", [
    pytest.param(("--variant", "default"), id="variant"),
    pytest.param(("--batch-size", "4"), id="batch-size"),
    pytest.param(("--preset", "paper"), id="preset"),
    pytest.param(("--set", "loss=bce"), id="set"),
    pytest.param(("--seed", "1"), id="seed"),
])
def test_resume_refuses_a_contradicting_flag(tmp_path, mnist_dir, capsys, flag):
    assert run(tmp_path, mnist_dir, "--max-steps", "1", "--variant", "hard", "--batch-size", "3") == 0
    before = (tmp_path / "ckpt.pt").read_bytes()
    assert train.main(["--resume", "--out-dir", str(tmp_path), "--device", "cpu", *flag]) == 2
    assert "contradicts the checkpoint" in capsys.readouterr().err
    assert (tmp_path / "ckpt.pt").read_bytes() == before        # nothing lost


def test_time_limit_counts_across_resumes(tmp_path, mnist_dir):
    assert run(tmp_path, mnist_dir, "--max-steps", "2", "--time-limit", "0.0001") == 0
    ck = train.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ck["step"] == 1 and ck["elapsed"] > 0.006             # stopped by the limit
    assert train.main(["--resume", "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    assert train.load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 2   # one more step, no more


def test_unknown_flag_exits_2(tmp_path, mnist_dir):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, mnist_dir, "--bogus")
    assert e.value.code == 2


def test_zero_steps_is_a_clear_error(tmp_path, mnist_dir, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, mnist_dir, "--max-steps", "0")
    assert e.value.code == 2 and "--max-steps must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("setting,message", [
    pytest.param("loss=wasserstein", "loss must be", id="bad-choice"),
    pytest.param("unary=ture", "unary is true or false", id="bad-bool"),
    pytest.param("lr=-1", "lr must be > 0", id="negative-lr"),
    pytest.param("lr=fast", "lr must be float", id="not-a-number"),
    pytest.param("nonsense=1", "expected FIELD=VALUE", id="unknown-field"),
])
def test_bad_set_is_a_clear_error(tmp_path, mnist_dir, capsys, setting, message):
    assert run(tmp_path, mnist_dir, "--max-steps", "1", "--set", setting) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ckpt.pt").exists()


def test_unwritable_output_folder_is_a_clear_error(tmp_path, mnist_dir, capsys):
    (tmp_path / "file").write_text("x")
    assert run(tmp_path / "file" / "sub", mnist_dir, "--max-steps", "1") == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, mnist_dir, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert run(tmp_path, mnist_dir, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1 and "weights_only" not in err


def test_missing_checkpoint_is_a_clear_error(tmp_path, mnist_dir, capsys):
    assert run(tmp_path / "none", mnist_dir, "--resume") == 2
    assert "does not exist" in capsys.readouterr().err


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, mnist_dir, monkeypatch, capsys):
    assert run(tmp_path, mnist_dir, "--max-steps", "2") == 0
    good = (tmp_path / "ckpt.pt").read_bytes()
    orig = MDBiGAN.eg_loss
    monkeypatch.setattr(MDBiGAN, "eg_loss", lambda self, v, it=None: (orig(self, v, it)[0] * float("nan"), {}))
    assert run(tmp_path, mnist_dir, "--max-steps", "4", "--resume") == 3
    assert "NaN" in capsys.readouterr().err
    assert (tmp_path / "ckpt.pt").read_bytes() == good


def diverge_after(steps, monkeypatch):
    """Makes the run's generator diverge in each step s + 1 for s in `steps` (its weights thrown
    off after the update), as a GAN does when it blows up."""
    orig = train.train_step

    def train_step(net, opt_d, opt_eg, videos, autocast, ema=None, iteration=None):
        out = orig(net, opt_d, opt_eg, videos, autocast, ema, iteration)
        if iteration in steps:
            with torch.no_grad():
                for p in net.gen.parameters():
                    p.add_(2 * torch.randn_like(p))
        return out
    monkeypatch.setattr(train, "train_step", train_step)


def assert_same_run_state(a, b, lr_scale=1.0):
    """Two checkpoints hold the same weights, average and optimiser states (the learning rates of
    b = lr_scale times a's)."""
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for opt in ("opt_d", "opt_eg"):
        for i, state in a[opt]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, b[opt]["state"][i][k]), (opt, i, k)
        assert b[opt]["param_groups"][0]["lr"] == a[opt]["param_groups"][0]["lr"] * lr_scale


def test_a_divergence_rolls_back_to_the_weights_before_it(tmp_path, mnist_dir, monkeypatch, capsys):
    """The generator thrown off in step 16 shows in line 17's reconstruction error: the run is
    restored to step 15 exactly (weights, their average, optimiser states: those of a run stopped
    there), with its learning rates halved, and is told so in the log."""
    assert run(tmp_path / "clean", mnist_dir, "--max-steps", "15") == 0
    diverge_after({15}, monkeypatch)
    assert run(tmp_path / "div", mnist_dir, "--max-steps", "17", "--rollback", "1.5") == 0
    out = capsys.readouterr().out
    assert re.search(r"step 17: the reconstruction error jumped to [\d.]+ .*rolled back to the weights "
                     r"of step 15, learning rates halved", out), out[-2000:]
    assert "rolled back" in (tmp_path / "div" / "log.txt").read_text()
    a = train.load_checkpoint(str(tmp_path / "clean" / "ckpt.pt"))
    b = train.load_checkpoint(str(tmp_path / "div" / "ckpt.pt"))
    assert_same_run_state(a, b, 0.5)
    assert b["guard"]["rollbacks"] == 1


def test_a_second_rollback_to_the_same_copy_restores_it_unchanged(tmp_path, mnist_dir, monkeypatch, capsys):
    """Thrown off in steps 16 and 18: both rollbacks go back to step 15's copy, which the steps
    between them must not have changed (the optimisers update their states in place)."""
    assert run(tmp_path / "clean", mnist_dir, "--max-steps", "15") == 0
    diverge_after({15, 17}, monkeypatch)
    assert run(tmp_path / "div", mnist_dir, "--max-steps", "19", "--rollback", "1.5") == 0
    assert capsys.readouterr().out.count("rolled back to the weights of step 15") == 2
    a = train.load_checkpoint(str(tmp_path / "clean" / "ckpt.pt"))
    b = train.load_checkpoint(str(tmp_path / "div" / "ckpt.pt"))
    assert_same_run_state(a, b, 0.25)


def test_rollbacks_stop_after_three(tmp_path, mnist_dir, monkeypatch, capsys):
    """A run that keeps diverging is rolled back three times, then only warned about."""
    diverge_after(set(range(15, 40, 2)), monkeypatch)
    assert run(tmp_path, mnist_dir, "--max-steps", "30", "--rollback", "1.5") == 0
    out = capsys.readouterr().out
    assert out.count("rolled back") == 3 and out.count("no more rollbacks") == 1
    assert train.load_checkpoint(str(tmp_path / "ckpt.pt"))["guard"]["rollbacks"] == 4


def test_a_resumed_run_is_guarded_from_its_first_line(tmp_path, mnist_dir, monkeypatch, capsys):
    """The sound lines' errors travel in the checkpoint: a run resumed at step 15 and thrown off
    at once is rolled back to where it resumed."""
    assert run(tmp_path, mnist_dir, "--max-steps", "15") == 0
    assert len(train.load_checkpoint(str(tmp_path / "ckpt.pt"))["guard"]["history"]) == 8
    diverge_after({15}, monkeypatch)
    assert run(tmp_path, mnist_dir, "--max-steps", "17", "--resume", "--rollback", "1.5") == 0
    assert "rolled back to the weights of step 15" in capsys.readouterr().out


def test_the_rollback_takes_the_run_on_with_sound_weights(tmp_path, mnist_dir, monkeypatch, capsys):
    """After the rollback the error is back where it was, and the run trains on."""
    diverge_after({15}, monkeypatch)
    assert run(tmp_path, mnist_dir, "--max-steps", "24", "--rollback", "1.5") == 0
    recs = [json.loads(line)["rec"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert recs[16] > 1.5 * max(recs[8:16])                  # the divergence showed
    assert max(recs[17:]) < 1.1 * max(recs[8:16])            # and is gone
    assert capsys.readouterr().out.count("rolled back") == 1


def test_a_sound_run_is_the_same_with_and_without_the_rollback_guard(tmp_path, mnist_dir):
    """The guard's copies draw no random numbers and change nothing until a rollback."""
    assert run(tmp_path / "on", mnist_dir, "--max-steps", "12") == 0
    assert run(tmp_path / "off", mnist_dir, "--max-steps", "12", "--rollback", "0") == 0
    assert_same_run_state(train.load_checkpoint(str(tmp_path / "on" / "ckpt.pt")),
                          train.load_checkpoint(str(tmp_path / "off" / "ckpt.pt")))


@pytest.mark.parametrize("factor", ["1", "-2", "0.5"])
def test_a_rollback_factor_of_one_or_less_is_refused(tmp_path, mnist_dir, capsys, factor):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, mnist_dir, "--rollback", factor)
    assert e.value.code == 2 and "--rollback must be 0" in capsys.readouterr().err


def test_sigint_saves_a_checkpoint_and_the_loss_plot(tmp_path, mnist_dir, monkeypatch):
    orig, calls = MDBiGAN.d_loss, []

    def d_loss(self, v):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return orig(self, v)
    monkeypatch.setattr(MDBiGAN, "d_loss", d_loss)
    assert run(tmp_path, mnist_dir, "--max-steps", "50") == 128 + signal.SIGINT
    assert train.load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 2
    assert (tmp_path / "losses.png").exists()


def test_batches_come_from_each_ranks_own_shard():
    for rank in range(3):
        idx = train.batch_indices(0, rank, 3, step=7, n_items=100, batch=50)
        assert (idx % 3 == rank).all() and idx.max() < 100
    assert (train.batch_indices(0, 0, 1, 7, 100, 8) == train.batch_indices(0, 0, 1, 7, 100, 8)).all()


def test_bench_times_the_training_step(capsys):
    assert train.main(["--bench", "1", "--preset", "tiny", "--device", "cpu"]) == 0
    assert re.search(r"tiny +16x16 T=4 batch +4: +[\d.]+ ms/step", capsys.readouterr().out)


def test_torchrun_two_gloo_ranks(tmp_path, mnist_dir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--preset", "tiny", "--device", "cpu", "--max-steps", "3",
           "--out-dir", str(tmp_path), "--mnist-dir", mnist_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ranks 2" in r.stdout
    ck = train.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ck["step"] == 3
    torch.manual_seed(0)
    init = MDBiGAN(Config.from_dict(ck["config"])).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in ck["model"].items() if v.is_floating_point())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_step_bf16(tmp_path, mnist_dir):
    """The default GPU preset's model takes bf16 autocast steps on CUDA, finite, fused Adam."""
    cfg = train.PRESETS["structured64"][1]
    device = torch.device("cuda")
    model, opt_d, opt_eg = train.build(cfg, device)
    autocast, _ = train.speedups(device)
    x = torch.rand(8, cfg.frames, 1, cfg.size, cfg.size, device=device)
    before = [p.detach().clone() for p in model.eg_parameters()]
    losses, terms = train.train_step(model, opt_d, opt_eg, x, autocast)
    assert torch.isfinite(losses).all() and {"d_i", "d_v", "g", "rec"} <= set(terms)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.eg_parameters()))
    assert train.main(["--preset", "tiny", "--device", "cuda", "--out-dir", str(tmp_path),
                       "--mnist-dir", mnist_dir, "--max-steps", "2"]) == 0


@pytest.mark.parametrize("structured", [False, True], ids=["conv", "where-what"])
def test_channels_last_gives_the_same_losses(structured):
    cfg = replace(train.PRESETS["tiny"].config, structured=structured, d_dropout=0.0)
    x = torch.rand(3, 4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    out = []
    for channels_last in (False, True):
        model, _, _ = train.build(cfg, torch.device("cpu"), channels_last)
        torch.manual_seed(1)
        out.append(torch.stack([model.d_loss(x)[0], model.eg_loss(x)[0]]).detach())
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-5)


def test_fit_priors_matches_the_encoders_codes(tmp_path, mnist_dir):
    """After training, sample() draws z_C from a mixture fitted to E_C's codes of training videos."""
    assert run(tmp_path, mnist_dir, "--max-steps", "2", "--set", "prior_components=2",
               "--set", "prior_weight=1", "--set", "structured=true") == 0
    model = MDBiGAN.from_checkpoint(str(tmp_path))
    import data
    ds = data.MotionMNIST("train", mnist_dir, model.cfg.frames, model.cfg.size)
    codes, eps = model.prior_codes(train.to_videos(ds.render(range(len(ds)))[0], torch.device("cpu")))
    torch.manual_seed(0)
    z_c, _ = model.sample(4000)
    # (the fit's covariance floor, 1e-4, is a 0.01 std: the untrained codes barely vary)
    torch.testing.assert_close(z_c.mean(0), codes.mean(0), atol=0.002 + 0.1 * codes.std(0).mean().item(), rtol=0)
    assert not torch.equal(model.content_prior.means, torch.zeros_like(model.content_prior.means))


def test_ema_follows_the_weights_with_a_short_memory_at_first():
    """EMA.update: avg <- avg + (1 - d)(w - avg), d = min(decay, (1 + n) / (10 + n)) at update n."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = train.EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()                                                 # n = 1: d = 2 / 11
    torch.testing.assert_close(ema.avg.weight, start + 9 / 11)
    for _ in range(100):
        ema.update()                                             # d reaches 0.9, the average w
    torch.testing.assert_close(ema.avg.weight, model.weight, atol=1e-4, rtol=0)
    assert not ema.avg.training and not ema.avg.weight.requires_grad
