"""Pretraining on CPU: schedule and groups, a falling loss, exact resume, non-finite stop, real DDP."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpmae_core.checkpoints import safe_load
from mpmae_core.data import synthetic
from mpmae_core.engine import NonFiniteLossError, TrainConfig, Trainer, latest_checkpoint, lr_at, param_groups
from mpmae_core.models import build_mpmae

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return synthetic.write_synthetic(tmp_path_factory.mktemp("train-data"), n_tiles=24, size=64, seed=0)


def _cfg(h5, out, **kw):
    base = dict(data=str(h5), output_dir=str(out), img_size=32, patch_size=16, tasks="S2", epochs=2,
                warmup_epochs=0.5, batch_size=2, accum_steps=1, lr=1e-3, workers=0, log_every=1,
                preview_every=0, device="cpu", loss_weighting="equal")
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warmup_then_half_cosine():
    assert lr_at(0, 100, 10, 1.0) == 0.0
    assert lr_at(5, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)  # half way through the cosine
    assert lr_at(100, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)
    mid = lr_at(32, 100, 10, 2.0)
    assert mid == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_param_groups_spare_norms_biases_grn_uncertainty_and_mask_token():
    model = build_mpmae("atto", ["sentinel2", "lat"], loss_weighting="uncertainty")
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    named = dict(model.named_parameters())
    for name in ("weighting.log_vars", "mask_token", "encoder.stages.0.0.grn.gamma", "encoder.stages.0.0.norm.weight",
                 "encoder.stages.0.0.pwconv1.bias", "proj.bias", "heads.lat.norm.weight"):
        assert id(named[name]) in ids, name
    for name in ("encoder.stages.0.0.pwconv1.weight", "encoder.initial_conv.0.weight", "proj.weight", "heads.lat.pred.weight"):
        assert id(named[name]) not in ids, name
    assert id(named["encoder.norm.weight"]) not in ids | {id(p) for p in decay["params"]}  # frozen, not optimised


def test_short_run_lowers_the_loss(h5, tmp_path):
    cfg = _cfg(h5, tmp_path / "run", img_size=64, epochs=8, batch_size=4, lr=2e-3)
    result = Trainer(cfg).train()
    losses = [h.task_losses["sentinel2"] for h in result.history]
    assert len(losses) == 32  # 16 training tiles / batch 4 x 8 epochs
    assert sum(losses[-8:]) / 8 < 0.85 * sum(losses[:8]) / 8
    assert latest_checkpoint(tmp_path / "run") == result.last_checkpoint


def test_resume_mid_epoch_gives_the_uninterrupted_weights(h5, tmp_path):
    common = dict(epochs=2, batch_size=2, accum_steps=2, checkpoint_every=3, tasks="all_mod", loss_weighting="uncertainty")
    full = Trainer(_cfg(h5, tmp_path / "full", **common)).train()
    assert full.steps == 8  # 16 training tiles / (2 x 2) = 4 steps per epoch
    interrupted = Trainer(_cfg(h5, tmp_path / "cut", max_steps=3, **common)).train()
    assert interrupted.steps == 3 and interrupted.epochs_done == 0  # stopped mid-epoch 0
    ckpt = safe_load(interrupted.last_checkpoint)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (3, 0, 6)
    assert ckpt["rng"]["torch"].dtype == torch.uint8  # torch RNG state saved with the checkpoint
    # a save killed half-way leaves a temporary file: resume must ignore it
    (tmp_path / "cut" / ".checkpoint-00000006.abc.partial.pt").write_bytes(b"half a file")
    trainer = Trainer(_cfg(h5, tmp_path / "cut", **common))
    trainer.load(interrupted.last_checkpoint)
    assert torch.equal(torch.get_rng_state(), ckpt["rng"]["torch"])  # restored on resume
    resumed = trainer.train()  # resumes from the latest checkpoint itself
    assert resumed.history[0].step == 4 and resumed.steps == 8
    a, b = safe_load(full.last_checkpoint)["model"], safe_load(resumed.last_checkpoint)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_non_finite_loss_stops_before_any_update(h5, tmp_path):
    trainer = Trainer(_cfg(h5, tmp_path / "nan"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        trainer.model.proj.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at optimizer step 0 .*sentinel2.*Lower the learning rate"):
        trainer.train()
    after = trainer.model.state_dict()
    for key in before:
        if key != "proj.weight":
            assert torch.equal(before[key], after[key]), key
    assert latest_checkpoint(tmp_path / "nan") is None


def _pretrain_cmd(h5, out, batch, nproc):
    args = ["--preset", "demo", "--data", str(h5), "--output-dir", str(out), "--tasks", "sentinel2,lat",
            "--img-size", "32", "--patch-size", "16", "--epochs", "1", "--warmup-epochs", "0.5",
            "--batch-size", str(batch), "--lr", "1e-3", "--workers", "0", "--device", "cpu", "--preview-every", "0"]
    if nproc == 1:
        return [sys.executable, "-m", "training.pretrain", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "training.pretrain", *args]


def test_two_process_gloo_ddp_equals_one_process_with_the_same_global_batch(h5, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    one = subprocess.run(_pretrain_cmd(h5, tmp_path / "one", 4, 1), capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_pretrain_cmd(h5, tmp_path / "two", 2, 2), capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es); effective batch 4" in two.stderr
    a = safe_load(latest_checkpoint(tmp_path / "one"))
    b = safe_load(latest_checkpoint(tmp_path / "two"))
    assert a["step"] == b["step"] == 4 and b["world_size"] == 2
    for key, va in a["model"].items():
        torch.testing.assert_close(b["model"][key], va, rtol=1e-4, atol=1e-5, msg=key)
    torch.manual_seed(0)  # the runs' initialisation (Trainer seeds before building the model)
    init = build_mpmae("atto", "sentinel2,lat").state_dict()
    moved = [k for k in init if (a["model"][k] - init[k]).abs().max() > 1e-4]
    assert len(moved) > 50  # training really changed the weights, so the equality is not trivial
    assert list((tmp_path / "two").glob("checkpoint-*.pt")) and not list((tmp_path / "two").glob("*rank*"))


def test_a_killed_run_resumes_to_the_uninterrupted_weights(h5, tmp_path):
    """SIGKILL the real command after its first mid-epoch checkpoint; the same command resumes."""
    import signal
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    extra = ["--epochs", "3", "--checkpoint-every", "2", "--batch-size", "2", "--img-size", "64"]

    def cmd(out):
        base = _pretrain_cmd(h5, out, 2, 1)
        return base + extra

    full = subprocess.run(cmd(tmp_path / "full"), capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("checkpoint-00000002.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = latest_checkpoint(out)
    assert last is not None and safe_load(last)["step"] < 24  # killed before the end (8 steps per epoch x 3)
    resumed = subprocess.run(cmd(out), capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = safe_load(latest_checkpoint(tmp_path / "full"))
    b = safe_load(latest_checkpoint(out))
    assert a["step"] == b["step"] == 24
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=1e-6, msg=key)
