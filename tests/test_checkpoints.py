"""Reference checkpoint import: layouts built from the documented shapes, every tensor's mapping,
safe loading, precise reports, refusal of mismatched sizes, and our own format."""

import argparse
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from mpmae_core import checkpoints as C
from mpmae_core import registry
from mpmae_core.models import build_encoder, build_mpmae

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _randomised(model, seed=0):
    """Every parameter distinct, so a swapped or transposed tensor cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def _reference_args(tasks):
    order = [t for t in registry.REFERENCE_TASK_ORDER if t in tasks]
    return argparse.Namespace(out_modalities={t: "all" for t in order}, model="convnextv2_atto",
                              output_dir=pathlib.PurePosixPath("/tmp/out"), patch_size=16, input_size=112)


def test_sparse_kernel_layout_follows_the_reference_notes():
    """[k*k, in, out] -> (out, in, k, k): permute, reshape, transpose the last two axes."""
    k, cin, cout = 3, 2, 4
    kernel = torch.randn(k * k, cin, cout)
    w = C._conv_kernel(kernel, k)
    for o in range(cout):
        for i in range(cin):
            for r in range(k):
                for c in range(k):
                    assert w[o, i, r, c] == kernel[c * k + r, i, o]
    dw = torch.randn(49, 5)
    wd = C._dw_kernel(dw, 7)
    assert wd.shape == (5, 1, 7, 7) and wd[3, 0, 2, 5] == dw[5 * 7 + 2, 3]
    torch.testing.assert_close(C._conv_kernel_to_me(w), kernel)
    torch.testing.assert_close(C._dw_kernel_to_me(wd), dw)


@pytest.mark.parametrize("patch", [16, 8])
def test_sparse_checkpoint_round_trip_maps_every_tensor(tmp_path, patch):
    model = _randomised(build_mpmae("atto", "all_mod", patch_size=patch, share_decoder=True))
    sd = C.export_reference_layout(model)
    # the documented reference shapes
    assert sd["encoder.initial_conv.0.kernel"].shape == (9, 12, 40)
    assert sd["encoder.stem.0.kernel"].shape == ((patch // 8) ** 2, 40)
    assert sd["encoder.stages.2.5.dwconv.kernel"].shape == (49, 160)
    assert sd["encoder.stages.2.5.grn.gamma"].shape == (1, 640)
    assert sd["encoder.downsample_layers.1.1.kernel"].shape == (4, 80, 160)
    assert sd["encoder.stages.0.0.dwconv.bias"].shape == (1, 40)
    path = tmp_path / "checkpoint-199.pth"
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 199,
                "scaler": {}, "args": _reference_args(model.tasks)}, path)

    imported = C.import_reference_checkpoint(path)
    r = imported.report
    assert (r.layout, r.size, r.patch_size, r.in_chans) == ("sparse", "atto", patch, 12)
    assert r.tasks == tuple(registry.TASKS) and r.shared_decoder
    assert r.unexpected == [] and r.missing == ["norm.bias", "norm.weight"]
    rebuilt = imported.build_mpmae(convention="sparse")
    original = model.state_dict()
    restored = rebuilt.state_dict()
    assert set(original) == set(restored)
    for key in original:
        if key.startswith("encoder.norm."):
            continue  # absent from the sparse layout
        torch.testing.assert_close(restored[key], original[key], rtol=0, atol=0, msg=key)
    x = {"sentinel2": torch.randn(2, 12, 7 * patch, 7 * patch)}
    mask = torch.rand(2, 7, 7) < 0.6
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encoder(x["sentinel2"], mask), model.encoder(x["sentinel2"], mask))


def test_uncertainty_weights_follow_the_checkpoints_task_order():
    model = build_mpmae("atto", ["sentinel2", "era5", "lat", "esa_worldcover"], share_decoder=True)
    with torch.no_grad():
        model.weighting.log_vars.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    sd = C.export_reference_layout(model)
    ref_order = [t for t in registry.REFERENCE_TASK_ORDER if t in model.tasks]
    expected = {t: v for t, v in zip(model.tasks, [0.1, 0.2, 0.3, 0.4])}
    assert sd["loss_fn.log_vars"].tolist() == pytest.approx([expected[t] for t in ref_order])
    # a checkpoint whose args list its modalities in another order is read in that order
    reversed_args = argparse.Namespace(out_modalities={t: "all" for t in reversed(ref_order)})
    sd["loss_fn.log_vars"] = torch.tensor([expected[t] for t in reversed(ref_order)])
    imported = C.import_reference_state(sd, reversed_args)
    assert imported.mpmae_state["weighting.log_vars"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_independent_decoders_are_detected_and_kept():
    model = _randomised(build_mpmae("atto", "pix_mod", share_decoder=False), seed=3)
    imported = C.import_reference_state(C.export_reference_layout(model))
    assert not imported.report.shared_decoder
    rebuilt = imported.build_mpmae(convention="sparse")
    for t in model.tasks:
        torch.testing.assert_close(rebuilt.decoders[t][0].pwconv1.weight, model.decoders[t][0].pwconv1.weight)


def test_dense_finetune_layout_drops_head_and_keeps_final_norm():
    enc = _randomised(build_encoder("tiny", patch_size=8, convention="reference_dense"), seed=1)
    sd = dict(enc.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.randn(10, 768), torch.randn(10)
    imported = C.import_reference_state({f"module.{k}": v for k, v in sd.items()})
    r = imported.report
    assert (r.layout, r.size, r.patch_size, r.tasks) == ("dense_finetune", "tiny", 8, ())
    assert r.missing == [] and r.unexpected == []
    assert any("head" in n for n in r.notes)
    rebuilt = imported.build_encoder()
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(C.CheckpointError, match="no decoders or heads"):
        imported.build_mpmae()


def test_missing_and_unexpected_keys_are_named():
    model = build_mpmae("atto", "S2")
    sd = C.export_reference_layout(model)
    del sd["encoder.stages.1.0.dwconv.bias"]
    sd["encoder.stages.9.0.extra"] = torch.zeros(1)
    sd["some_other.weight"] = torch.zeros(1)
    r = C.import_reference_state(sd).report
    assert "stages.1.0.dwconv.bias" in r.missing
    assert r.unexpected == ["encoder.stages.9.0.extra", "some_other.weight"]
    assert "stages.1.0.dwconv.bias" in r.summary() and "some_other.weight" in r.summary()


def test_mismatched_size_or_patch_is_refused_naming_both():
    r = C.import_reference_state(C.export_reference_layout(build_mpmae("atto", "S2", patch_size=16))).report
    C.check_compatible(r, "atto", 16)
    with pytest.raises(C.CheckpointError, match=r"atto with patch size 16, but the model is tiny with patch size 8"):
        C.check_compatible(r, "tiny", 8)


def test_load_into_refuses_another_size_and_fills_a_matching_model():
    source = _randomised(build_mpmae("atto", "S2", patch_size=16), seed=5)
    imported = C.import_reference_state(C.export_reference_layout(source))
    with pytest.raises(C.CheckpointError, match="atto with patch size 16, but the model is atto with patch size 8"):
        imported.load_into(build_encoder("atto", patch_size=8))
    with pytest.raises(C.CheckpointError, match="but the model is femto with patch size 16"):
        imported.load_into(build_mpmae("femto", "S2"))
    target = build_mpmae("atto", "S2", patch_size=16)
    imported.load_into(target)
    torch.testing.assert_close(target.encoder.stages[3][1].pwconv2.weight, source.encoder.stages[3][1].pwconv2.weight)
    torch.testing.assert_close(target.heads["sentinel2"].pred.weight, source.heads["sentinel2"].pred.weight)


def test_unknown_layouts_are_refused():
    with pytest.raises(C.CheckpointError, match="original ConvNeXt stem"):
        C.import_reference_state({"stem_orig.0.weight": torch.zeros(1)})
    with pytest.raises(C.CheckpointError, match="not an MMEarth ConvNeXt V2 checkpoint"):
        C.import_reference_state({"fc.weight": torch.zeros(1)})


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > exploited.txt",))


def test_arbitrary_objects_are_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": _Exploit()}, path)
    with pytest.raises(C.CheckpointError, match="not allowed"):
        C.import_reference_checkpoint(path)
    assert not (tmp_path / "exploited.txt").exists()


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(C.CheckpointError, match="not a readable PyTorch checkpoint"):
        C.import_reference_checkpoint(bad)
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.import_reference_checkpoint(tmp_path / "absent.pth")


def test_our_format_round_trip_and_reference_file_refused(tmp_path):
    model = _randomised(build_mpmae("atto", "img_mod", patch_size=8), seed=2).eval()
    path = C.save_checkpoint(tmp_path / "ours.pt", model, {"epoch": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["ours.pt"]  # no temporary file left
    rebuilt = C.build_from_checkpoint(path).eval()
    assert rebuilt.config() == model.config()
    x = torch.randn(1, 12, 56, 56)
    mask = torch.rand(1, 7, 7) < 0.6
    with torch.no_grad():
        ours, theirs = rebuilt.decode(rebuilt.encoder(x, mask), mask), model.decode(model.encoder(x, mask), mask)
    for task in model.tasks:
        torch.testing.assert_close(ours[task], theirs[task])
    with pytest.raises(ValueError, match="no target for task"):
        model({"sentinel2": x}, mask)
    ref = tmp_path / "ref.pth"
    torch.save({"model": C.export_reference_layout(model)}, ref)
    with pytest.raises(C.CheckpointError, match="import_reference"):
        C.load_checkpoint(ref)


def test_import_command_writes_our_format(tmp_path):
    model = _randomised(build_mpmae("atto", "all_mod", share_decoder=True), seed=4)
    ref = tmp_path / "checkpoint-0.pth"
    torch.save({"model": C.export_reference_layout(model), "args": _reference_args(model.tasks)}, ref)
    out = tmp_path / "imported.pt"
    proc = subprocess.run([sys.executable, "-m", "training.import_reference", str(ref), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "reference layout sparse: ConvNeXt V2 atto, patch 16" in proc.stdout
    obj = C.load_checkpoint(out)
    assert obj["config"]["encoder"]["convention"] == "reference_dense"
    assert obj["config"]["share_decoder"] is True
    bad = subprocess.run([sys.executable, "-m", "training.import_reference", str(tmp_path / "x.pth"), "--out",
                          str(tmp_path / "y.pt")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
