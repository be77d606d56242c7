"""The training loop: learning, checkpoints, exact resume, and failure modes."""
import json

import pytest
import torch

import mimir_core as mc


def tiny(fixture_csv, **kw):
    """The tiny preset on the fixture; an epoch is one pass over the rows (label1_repeat 1), so the step
    counts below are rows // 64. tests/test_grammar.py covers repeated label-1 rows."""
    return mc.make_config("tiny", data=str(fixture_csv), **{"label1_repeat": 1, **kw})


def test_tiny_preset_learns_on_the_fixture(fixture_csv, tmp_path):
    cfg = tiny(fixture_csv, epochs=8)                   # 36 steps an epoch: ~290 steps
    trainer = mc.Trainer(cfg, tmp_path / "run")
    before = mc.heldout_losses(trainer.model, trainer.diffusion, trainer.val_data, cfg)
    trainer.run(progress=False)
    after = trainer.history[-1]
    assert before["ce"] > 2.9                           # about ln 20 for an untrained model
    assert after["val_ce"] < 0.75 * before["ce"], (before, after)


def test_run_directory_holds_everything(fixture_csv, tmp_path):
    run = tmp_path / "run"
    summary = mc.train(tiny(fixture_csv), run, progress=False)
    for name in ("config.json", "vocab.json", "data_stats.json", "history.json", "history_steps.csv",
                 "last.pt", "best.pt", "convergence.png"):
        assert (run / name).exists(), name
    steps = (run / "history_steps.csv").read_text().splitlines()
    assert steps[0] == "step,epoch,lr,ce,vb,loss" and len(steps) == 1 + summary["step"]
    hist = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    assert {"train_ce", "train_vb", "val_ce", "val_vb", "val_loss", "val_binder_bits"} <= set(hist["epochs"][0])
    best = mc.load_checkpoint(run / "best.pt")       # chosen by the held-out binders' bound, not the overall loss
    assert best["best_by"] == "binder_bits" and summary["best_by"] == "binder_bits"
    assert best["best_val"] == min(e["val_binder_bits"] for e in hist["epochs"])
    assert best["step"] == min(hist["epochs"], key=lambda e: e["val_binder_bits"])["step"]


def test_best_checkpoint_follows_the_binders_not_the_background(fixture_csv, tmp_path):
    """The held-out loss is mostly background's; best.pt follows the label-1 rows' bound, which the history
    keeps beside the overall figures, computed on held-out binders of trained targets only."""
    trainer = mc.Trainer(tiny(fixture_csv, epochs=3), tmp_path / "run")
    val = trainer.val_data
    rows = trainer.binder_rows.tolist()
    assert rows and all(val.label[i] == 1 for i in rows)
    assert len(rows) == int((val.label == 1).sum())               # every fixture target has training rows
    bits = mc.heldout_binder_bits(trainer.model, trainer.diffusion, val, trainer.binder_rows)
    again = mc.heldout_binder_bits(trainer.model, trainer.diffusion, val, trainer.binder_rows.flip(0))
    assert bits == pytest.approx(again, rel=1e-6) and bits > 4.3         # fixed per-peptide noise; untrained: worse than uniform
    trainer.run(progress=False)
    hist = trainer.history
    assert hist[-1]["val_binder_bits"] < bits                      # it learns the binders
    assert mc.heldout_binder_bits(trainer.model, trainer.diffusion, val, trainer.binder_rows[:0]) is None


def test_max_steps_and_epochs_stop_at_whichever_comes_first(fixture_csv, tmp_path):
    assert mc.train(tiny(fixture_csv, epochs=5, max_steps=10), tmp_path / "a", progress=False)["step"] == 10
    assert mc.train(tiny(fixture_csv, epochs=1, max_steps=1000), tmp_path / "b", progress=False)["step"] == 36


def test_interrupted_run_resumes_to_the_same_weights(fixture_csv, tmp_path):
    cfg = tiny(fixture_csv, epochs=3)
    straight = mc.train(cfg, tmp_path / "straight", progress=False)

    def kill_at_50(step):                               # mid-epoch 2; last save was the epoch-1 end
        if step == 50:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mc.train(cfg, tmp_path / "resumed", progress=False, on_step=kill_at_50)
    assert mc.load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 50
    resumed = mc.train(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["step"] == straight["step"] == 108
    a = mc.load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = mc.load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ((tmp_path / "straight" / "history_steps.csv").read_text()
            == (tmp_path / "resumed" / "history_steps.csv").read_text())


def test_resume_from_an_epoch_checkpoint_after_a_hard_kill(fixture_csv, tmp_path):
    """A kill leaves only the files written so far: resume from last.pt loses only the steps since."""
    cfg = tiny(fixture_csv, epochs=2)
    mc.train(cfg, tmp_path / "s", progress=False)
    mc.train(tiny(fixture_csv, epochs=1), tmp_path / "k", progress=False)       # "killed" after epoch 1
    mc.train(cfg, tmp_path / "k", resume=True, progress=False)                  # epochs may be extended
    a = mc.load_checkpoint(tmp_path / "s" / "last.pt")
    b = mc.load_checkpoint(tmp_path / "k" / "last.pt")
    assert a["step"] == b["step"] == 72
    # the lr schedule's horizon differed in epoch 1, so weights are close, not equal
    assert all(torch.isfinite(v).all() for v in b["model"].values())
    assert [e["epoch"] for e in b["history"]] == [1, 2]


def test_existing_run_needs_resume(fixture_csv, tmp_path):
    mc.train(tiny(fixture_csv, max_steps=5), tmp_path / "run", progress=False)
    with pytest.raises(mc.DataError, match="already holds a run.*--resume"):
        mc.train(tiny(fixture_csv, max_steps=5), tmp_path / "run", progress=False)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(fixture_csv, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = mc.D3PM.losses

    def poisoned(self, model, x0, label, target_id, generator=None, **kw):
        ce, vb = original(self, model, x0, label, target_id, generator, **kw)
        if generator is None:                           # training steps only, not held-out scoring
            calls["n"] += 1
            if calls["n"] >= 45:
                return ce * float("nan"), vb
        return ce, vb
    monkeypatch.setattr(mc.D3PM, "losses", poisoned)
    with pytest.raises(mc.NonFiniteLoss, match=r"at step 45;.*last good state \(step 36\)"):
        mc.train(tiny(fixture_csv, epochs=3), tmp_path / "run", progress=False)
    ckpt = mc.load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 36 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_corrupt_foreign_and_mismatched_checkpoints_get_clear_errors(fixture_csv, tmp_path):
    run = tmp_path / "run"
    mc.train(tiny(fixture_csv, max_steps=5), run, progress=False)
    good = (run / "last.pt").read_bytes()

    (run / "last.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(mc.DataError, match="not a readable Mimir checkpoint"):
        mc.train(tiny(fixture_csv, max_steps=10), run, resume=True, progress=False)

    torch.save({"weights": torch.zeros(3)}, run / "last.pt")
    with pytest.raises(mc.DataError, match="not a Mimir checkpoint"):
        mc.load_run(run, checkpoint="last")

    class Evil:                                          # pickles code: weights_only refuses it
        def __reduce__(self):
            return (print, ("ran code",))
    torch.save({"format": mc.CHECKPOINT_FORMAT, "x": Evil()}, run / "last.pt")
    with pytest.raises(mc.DataError, match="not a readable Mimir checkpoint"):
        mc.load_checkpoint(run / "last.pt")

    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["dim"] = 64
    torch.save(ckpt, run / "best.pt")
    with pytest.raises(mc.DataError, match="do not match the config"):
        mc.load_run(run)


def test_resume_refuses_data_with_new_targets(fixture_csv, tmp_path):
    mc.train(tiny(fixture_csv, max_steps=5), tmp_path / "run", progress=False)
    other = tmp_path / "other.csv"
    other.write_text(fixture_csv.read_text() + "1,NEWTARGET,ACDEFGHIK,protX\n")
    with pytest.raises(mc.DataError, match="does not match the checkpoint.*NEWTARGET"):
        mc.Trainer(tiny(other, max_steps=10), tmp_path / "run", resume=True)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    mc.atomic_write(path, lambda f: f.write(b"old"))

    def dies(f):
        f.write(b"half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        mc.atomic_write(path, dies)
    assert path.read_bytes() == b"old"


def test_mixed_precision_covers_the_model_forward_and_not_the_loss_math(fixture_csv, tmp_path, monkeypatch):
    """The CUDA path's autocast, exercised on the CPU with bf16: the model runs in low precision, the
    posteriors and losses in fp32, and the step still trains."""
    monkeypatch.setattr(mc, "amp_dtype", lambda device, precision="auto": torch.bfloat16)
    trainer = mc.Trainer(tiny(fixture_csv, max_steps=5, device="cpu"), tmp_path / "run")
    seen = {}
    model_forward, loss_math = mc.X0Transformer.forward, mc.D3PM.ce_and_vb

    def forward_spy(self, *args):
        out = model_forward(self, *args)
        seen["model"] = (torch.is_autocast_enabled("cpu"), out.dtype)
        return out

    def loss_spy(self, logits, *args):
        seen["loss"] = (torch.is_autocast_enabled("cpu"), logits.dtype)
        return loss_math(self, logits, *args)
    monkeypatch.setattr(mc.X0Transformer, "forward", forward_spy)
    monkeypatch.setattr(mc.D3PM, "ce_and_vb", loss_spy)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    values = trainer.train_step(*trainer.train_data.batch(torch.arange(64)))
    assert seen["model"] == (True, torch.bfloat16) and seen["loss"] == (False, torch.float32)
    assert values.dtype == torch.float32 and torch.isfinite(values).all()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_resumed_run_keeps_its_settings_says_which_it_left_and_records_the_new_length(fixture_csv, tmp_path, capsys):
    """resumed_config, the one place a saved config meets the settings given: only how long and where a run
    trains may change; config.json then holds the settings the run goes on with."""
    run = tmp_path / "run"
    mc.train(tiny(fixture_csv, max_steps=5, lr=1e-3), run, progress=False)
    saved = mc.saved_config(run)
    cfg = mc.resumed_config(run, saved, None, {"max_steps": 12, "lr": 0.5, "dim": None, "data": None})
    assert (cfg.max_steps, cfg.lr, cfg.preset, cfg.data) == (12, 1e-3, "tiny", saved["data"])
    assert "note: a resumed run keeps its own settings; lr left as the run has them" in capsys.readouterr().err
    with pytest.raises(mc.DataError, match="holds a tiny run, which cannot continue as small"):
        mc.resumed_config(run, saved, "small", {})
    with pytest.raises(mc.DataError, match="setting max_steps = -1 is out of range"):
        mc.resumed_config(run, saved, None, {"max_steps": -1})
    mc.train(cfg, run, resume=True, progress=False)
    assert mc.saved_config(run)["max_steps"] == 12 and mc.load_checkpoint(run / "last.pt")["step"] == 12
