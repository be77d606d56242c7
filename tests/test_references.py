"""A target's known binders as conditioning (cfg.references): drawn in training, read by the model, given by
the user for a receptor the run never saw (generate, score, the command line)."""
import numpy as np
import pytest
import torch

import mimir_core as mc
from conftest import FIXTURE_MOTIFS, write_fixture


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """A tiny model on the fixture that knows its targets only by their known binders (the id always hidden)."""
    tmp = tmp_path_factory.mktemp("references")
    cfg = mc.make_config("tiny", data=str(write_fixture(tmp / "data.csv")), epochs=8, references=4, id_drop=1.0)
    mc.train(cfg, tmp / "run", progress=False)
    return tmp / "run"


def binders_of(run, target, n=6):
    return run.stats["binders"][target][:n]


# --- drawing references in training ----------------------------------------------------------------------

def test_a_row_reads_other_binders_of_its_own_target_never_itself():
    x0 = torch.tensor([[1, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0]])           # one residue each, row i -> i+1
    label = torch.tensor([1, 1, 1, 0, 1, 1])
    target_id = torch.tensor([1, 1, 1, 0, 2, 3])
    known = mc.KnownBinders(x0, label, target_id, num_targets=4)
    assert known.slot.tolist() == [0, 1, 2, -1, 0, 0]
    g = torch.Generator().manual_seed(0)
    refs = known.draw(target_id, known.slot, 50, g)                                 # (6, 50, 2)
    first = refs[..., 0]
    assert set(first[0].tolist()) == {2, 3} and set(first[1].tolist()) == {1, 3} and set(first[2].tolist()) == {1, 2}
    assert (refs[3] == mc.PAD).all()                    # background: none
    assert (refs[4] == mc.PAD).all() and (refs[5] == mc.PAD).all()     # a target's only binder has no other
    outside = known.draw(torch.tensor([1, 2]), torch.tensor([-1, -1]), 20, g)[..., 0]   # held-out rows: any of them
    assert set(outside[0].tolist()) == {1, 2, 3} and set(outside[1].tolist()) == {5}


def test_references_follow_the_target_and_the_id_can_be_hidden_while_they_stay():
    refs = torch.ones(4, 2, 3, dtype=torch.long)
    target_id = torch.tensor([1, mc.UNKNOWN_TARGET, 2, 3])
    kept_id, kept = mc.drop_references(target_id, refs, 0.0)
    assert kept_id.tolist() == target_id.tolist()
    assert (kept[1] == mc.PAD).all() and (kept[[0, 2, 3]] == 1).all()       # guidance's unconditional row: none
    hidden_id, still = mc.drop_references(target_id, refs, 1.0)
    assert (hidden_id == mc.UNKNOWN_TARGET).all() and torch.equal(still, kept)
    assert mc.drop_references(target_id, None, 1.0) == (target_id, None)


@pytest.mark.parametrize("attention", [False, True])
def test_the_model_reads_references_only_when_it_is_built_to(attention):
    vocab = mc.Vocab(mc.RESIDUES, ["A1", "B2"])
    plain = mc.build_model(mc.make_config("tiny"), vocab)
    assert plain.ref_encoder is None and not any("ref_" in k for k in plain.state_dict())
    model = mc.build_model(mc.make_config("tiny", references=3, reference_attention=attention), vocab).eval()
    assert (model.ref_encoder.attention is not None) == attention
    xt = torch.from_numpy(vocab.encode(["ACDEFGH", "KLMNPQ"])).long()
    t, label, target_id = torch.tensor([3, 5]), torch.tensor([1, 1]), torch.tensor([1, 2])
    refs = torch.from_numpy(vocab.encode(["WWYY", "PPLP", "RSWS", "", "", ""])).long().view(2, 3, -1)
    with torch.no_grad():
        torch.nn.init.normal_(model.ref_encoder.out.weight)                  # make the references matter
        none = model(xt, t, label, target_id)
        if attention:               # a row given no binder reads the empty slot: 0 at initialisation, as here
            torch.nn.init.normal_(model.ref_encoder.attention.proj.weight)
        empty = model(xt, t, label, target_id, torch.full_like(refs, mc.PAD))
        read = model(xt, t, label, target_id, refs)
        model.pack_residues = True                       # the CPU's path: each distinct binder encoded once
        packed = model(xt, t, label, target_id, refs)
        model.pack_residues = False
        padded = model(xt, t, label, target_id, refs)
    if not attention:
        assert torch.allclose(none, empty)              # no binder given is the id-only condition
    assert not torch.allclose(empty[0], read[0], atol=1e-4)
    assert torch.allclose(empty[1], read[1], atol=1e-6)     # the second row was given none
    residues = xt != mc.PAD                             # (PAD positions: 0 when packed, ignored either way)
    assert torch.allclose(packed[residues], padded[residues], atol=1e-5)


@pytest.mark.parametrize("setting, value", [("references", -1), ("references", mc.MAX_REFERENCES + 1),
                                            ("id_drop", 1.5)])
def test_reference_settings_out_of_range_are_refused(setting, value):
    with pytest.raises(mc.DataError, match=setting):
        mc.make_config("tiny", **{setting: value})


# --- a trained run that reads references -----------------------------------------------------------------

def test_a_receptor_never_seen_gets_peptides_that_follow_its_known_binders(reference_run):
    """The run never reads a target id: every target is known by its binders alone, as a new receptor is."""
    run = mc.load_run(reference_run)
    rates = {}
    for target, motif in FIXTURE_MOTIFS.items():
        made = mc.generate(run, 120, binders=binders_of(run, target), seed=1)
        rates[target] = {other: np.mean([m in p for p in made]) for other, m in FIXTURE_MOTIFS.items()}
    for target in FIXTURE_MOTIFS:           # its own motif more often than any other target's motif
        own = rates[target][target]
        assert own > 0.2 and all(own > 2 * rates[target][o] for o in FIXTURE_MOTIFS if o != target), rates


def test_given_binders_set_the_lengths_and_the_score_reads_them(reference_run):
    run = mc.load_run(reference_run)
    short = ["PPLPAA", "APPLPG"]                                          # 6 residues each
    assert {len(p) for p in mc.generate(run, 40, binders=short, seed=2)} == {6}
    peptides = ["KAPPLPAGE", "GRSWSKPAL", "AGGWWAKLM"]
    for target, motif in FIXTURE_MOTIFS.items():
        scored = mc.score(run, peptides, binders=binders_of(run, target), mix=1.0)
        best = max(scored, key=lambda r: r["score"])["peptide"]
        assert motif in best, (target, scored)
        assert scored == mc.score(run, peptides, binders=binders_of(run, target), mix=1.0)    # seeded: the same
    by_id = mc.score(run, peptides, target="P11111")          # a known target reads its training binders
    assert by_id[0]["score"] > by_id[2]["score"]


def test_bad_binders_are_refused_naming_the_problem(reference_run, trained_run):
    run = mc.load_run(reference_run)
    with pytest.raises(mc.DataError, match="no peptides"):
        mc.generate(run, 5, binders=[])
    with pytest.raises(mc.DataError, match=r"binder 2 'PPJP'.*'J'"):
        mc.generate(run, 5, binders=["PPLP", "PPJP"])
    with pytest.raises(mc.DataError, match=r"binder 1 'PP'.*length"):
        mc.score(run, ["PPLPAA"], binders=["PP"])
    with pytest.raises(mc.DataError, match="label 1"):
        mc.generate(run, 5, label=0, binders=["PPLPAA"])
    with pytest.raises(mc.DataError, match="known binders and no target"):
        mc.generate(run, 5, target="NEWREC")
    with pytest.raises(mc.DataError, match="reads no known binders.*--references"):
        mc.generate(mc.load_run(trained_run), 5, binders=["PPLPAA"])


def test_the_command_line_takes_a_binders_file(reference_run, tmp_path, capsys):
    binders = tmp_path / "binders.txt"
    binders.write_text("\n".join(mc.load_run(reference_run).stats["binders"]["O33333"][:5]) + "\n")
    args = ["--checkpoint-dir", str(reference_run.parent), "--run-name", reference_run.name]
    mc.main(["generate", *args, "-n", "30", "--binders", str(binders)])
    made = capsys.readouterr().out.split()
    assert len(made) == 30 and np.mean(["GGWW" in p for p in made]) > 0.2
    peptides = tmp_path / "peptides.txt"
    peptides.write_text("KAPPLPAGE\nAGGWWAKLM\n")
    mc.main(["score", *args, "--input", str(peptides), "--binders", str(binders), "--mix", "1"])
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert rows[1][0] == "AGGWWAKLM" and float(rows[1][1]) > float(rows[0][1])
    binders.write_text("PPLPAA\nPPL1PA\n")
    with pytest.raises(SystemExit) as stop:
        mc.main(["generate", *args, "--binders", str(binders)])
    assert stop.value.code == 2 and "line 2" in capsys.readouterr().err
    binders.write_text("\n\n")
    with pytest.raises(SystemExit) as stop:
        mc.main(["score", *args, "--input", str(peptides), "--binders", str(binders)])
    assert stop.value.code == 2 and "no peptides" in capsys.readouterr().err


def test_the_notebooks_sample_table_has_a_column_for_known_binders(reference_run):
    import mimir_colab as colab
    run = mc.load_run(reference_run)
    table = colab.sample_table(run, target="P11111", n=5, binders=binders_of(run, "O33333")).splitlines()
    assert "with KNOWN_BINDERS' receptor" in table[0] and len(table) == 2 + 5
    assert "KNOWN_BINDERS" not in colab.sample_table(run, target="P11111", n=5).splitlines()[0]


def test_a_receptor_given_by_its_binders_samples_at_the_guidance_tuned_for_that(reference_run, trained_run):
    run = mc.load_run(reference_run)
    assert run.tuning["binders_guidance"] in mc.GUIDANCE_GRID
    assert [f["guidance"] for f in run.tuning["binders_grid"]] == list(mc.GUIDANCE_GRID)
    assert "binders_guidance" not in mc.load_run(trained_run).tuning          # an id-only run has none
    run.tuning = {**run.tuning, "guidance": 0.0, "binders_guidance": 2.0}
    given = binders_of(run, "P11111")
    assert mc.generate(run, 20, binders=given, seed=3) == mc.generate(run, 20, binders=given, seed=3, guidance=2.0)
    assert (mc.generate(run, 20, target="P11111", binders=given, seed=3)          # a known target: its own
            == mc.generate(run, 20, target="P11111", binders=given, seed=3, guidance=0.0))


def test_each_evaluated_row_reads_binders_of_its_own_target(reference_run, trained_run):
    run = mc.load_run(reference_run)
    labels, targets = [1, 0, 1, 1], ["P11111", "", "O33333", "P11111"]
    refs = mc.row_references(run, labels, targets)                       # (4, R, MAX_LEN)
    assert refs.shape == (4, run.cfg.references, mc.MAX_LEN) and (refs[1] == mc.PAD).all()   # background: none
    for row, target in ((0, "P11111"), (2, "O33333"), (3, "P11111")):
        assert set(run.vocab.decode(refs[row])) <= set(run.stats["binders"][target])
    assert torch.equal(refs, mc.row_references(run, labels, targets))     # seeded
    assert mc.row_references(mc.load_run(trained_run), labels, targets) is None
