"""What lets the model learn a motif's order: rotary attention, the distance from both ends, and
label-1 rows repeated in every epoch (with the unconditional branch kept at the data's own mix)."""
import json

import pytest
import torch

import mimir_core as mc


def test_rotary_scores_depend_on_the_offset_between_residues_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, mc.MAX_LEN, 8, generator=g), torch.randn(1, 2, mc.MAX_LEN, 8, generator=g)
    q[:, :, :] = q[:, :, :1]                            # the same query and key vector at every position
    k[:, :, :] = k[:, :, :1]
    cos, sin = mc.rotary_table(8)                                                  # (L, 4) each
    scores = mc.rotate(q, cos, sin) @ mc.rotate(k, cos, sin).transpose(-1, -2)     # (1, 2, L, L)
    for offset in (0, 1, 3, 7):
        diagonal = torch.diagonal(scores, offset=offset, dim1=-2, dim2=-1)
        assert torch.allclose(diagonal, diagonal[..., :1].expand_as(diagonal), atol=1e-4)
    assert not torch.allclose(scores[..., 0, 1], scores[..., 0, 5])          # ... and it does depend on it


def test_each_residue_knows_its_distance_from_the_c_terminus():
    """With termini on, the same residues at the same N-terminal positions read differently when the
    peptide is longer (the C-terminus moved); with it off and no rotary, positions only count from the N-end."""
    vocab = mc.Vocab(mc.RESIDUES, ["T1"])
    xt = torch.from_numpy(vocab.encode(["ACDEFGHIK", "ACDEFGHIKL"])).long()
    t, label, target = torch.tensor([3, 3]), torch.tensor([1, 1]), torch.tensor([1, 1])
    outputs = {}
    for termini in (True, False):
        cfg = mc.make_config("tiny", termini=termini, rotary=False)
        model = mc.build_model(cfg, vocab, "cpu").eval()
        model.blocks = torch.nn.ModuleList()            # no attention: a residue sees only its own embedding
        with torch.no_grad():
            outputs[termini] = model(xt, t, label, target)
    shared = slice(0, 9)                                 # the first nine residues are the same in both rows
    assert torch.allclose(outputs[False][0, shared], outputs[False][1, shared], atol=1e-6)
    assert not torch.allclose(outputs[True][0, shared], outputs[True][1, shared], atol=1e-6)


def test_an_epoch_repeats_every_label1_row():
    label = torch.tensor([0, 1, 0, 0, 1])
    rows = mc.epoch_rows(label, 3)
    assert sorted(rows.tolist()) == [0, 1, 1, 1, 2, 3, 4, 4, 4]
    assert mc.epoch_rows(label, 1).tolist() == [0, 1, 2, 3, 4]


def test_repeated_label1_rows_lose_their_label_that_many_times_less_often():
    """The unconditional branch (label dropped) must see each label at the data's own frequency; the
    'any target' branch (target dropped, label kept) keeps its rate p."""
    torch.manual_seed(0)
    n, p, k = 400_000, 0.1, 8
    label = torch.tensor([0, 1]).repeat(n // 2)
    target = torch.where(label == 1, 5, 0)
    new_label, new_target = mc.drop_condition(label, target, p, k)
    for l, p_unconditional in ((0, p), (1, p / k)):
        rows = label == l
        unconditional = (new_label[rows] == mc.UNKNOWN_LABEL).float().mean().item()
        assert abs(unconditional - p_unconditional) < 4 * (p_unconditional / (n / 2)) ** 0.5
    any_target = ((new_label == 1) & (new_target == mc.UNKNOWN_TARGET))[label == 1].float().mean().item()
    assert abs(any_target - p) < 0.005


def test_a_run_with_repeated_rows_resumes_to_the_same_weights(fixture_csv, tmp_path):
    cfg = mc.make_config("tiny", data=str(fixture_csv), epochs=2, label1_repeat=4)
    straight = mc.train(cfg, tmp_path / "straight", progress=False)

    def interrupt(step):
        if step == straight["step"] // 2 + 3:           # mid-epoch 2
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mc.train(cfg, tmp_path / "resumed", progress=False, on_step=interrupt)
    mc.train(cfg, tmp_path / "resumed", resume=True, progress=False)
    a = mc.load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = mc.load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_saved_before_these_settings_keep_their_own_model(fixture_csv, tmp_path):
    """A run whose config predates rotary / termini / label1_repeat loads as it was trained."""
    run = tmp_path / "old"
    legacy = dict(rotary=False, termini=False, label1_repeat=1)
    mc.train(mc.make_config("tiny", data=str(fixture_csv), max_steps=3, **legacy), run, progress=False)
    for name in ("last.pt", "best.pt"):
        ckpt = mc.load_checkpoint(run / name)
        for key in legacy:
            del ckpt["config"][key]
        torch.save(ckpt, run / name)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in legacy}))
    loaded = mc.load_run(run, device="cpu")
    assert (loaded.cfg.rotary, loaded.cfg.termini, loaded.cfg.label1_repeat) == (False, False, 1)
    mc.train(mc.make_config("tiny", data=str(fixture_csv), max_steps=6), run, resume=True, progress=False)
    assert mc.load_checkpoint(run / "last.pt")["step"] == 6


def test_the_moving_average_is_checkpointed_resumed_and_sampled_with(fixture_csv, tmp_path):
    cfg = mc.make_config("tiny", data=str(fixture_csv), epochs=2, ema_decay=0.9, label1_repeat=1)
    straight = mc.train(cfg, tmp_path / "straight", progress=False)

    def interrupt(step):
        if step == straight["step"] // 2 + 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mc.train(cfg, tmp_path / "resumed", progress=False, on_step=interrupt)
    mc.train(cfg, tmp_path / "resumed", resume=True, progress=False)
    a = mc.load_checkpoint(tmp_path / "straight" / "last.pt")
    b = mc.load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert not all(torch.equal(a["ema"][k], a["model"][k]) for k in a["ema"])   # an average, not a copy
    run = mc.load_run(tmp_path / "straight", checkpoint="last", device="cpu")
    assert all(torch.equal(v, a["ema"][k]) for k, v in run.model.state_dict().items())
