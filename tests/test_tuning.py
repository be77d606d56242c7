"""What a run tunes for itself on its validation split (guidance, the score's mix), and the measures and
baselines the tuning and the evaluation judge generated peptides by."""
import json

import numpy as np
import pytest

import mimir_core as mc
import mimir_eval as ev
from conftest import FIXTURE_MOTIFS


# --- specificity at matched novelty -----------------------------------------------------------------

def test_specificity_is_the_chance_a_peptide_aligns_better_to_its_own_targets_binders():
    held = {"A": ["WWWPPWWW", "WWPPWWWW"], "B": ["KKKDDKKK"], "C": ["EEEEGGEE"]}
    own = {"A": ["WWPPWW", "WPPWWW"], "B": ["KKDDKK", "KDDKKK"], "C": ["EEGGEE", "EEEGGE"]}
    assert mc.specificity(own, held) == {"A": 1.0, "B": 1.0, "C": 1.0}
    swapped = {"A": own["B"], "B": own["A"]}
    assert mc.specificity(swapped, held) == {"A": 0.0, "B": 0.0}
    same = {t: ["ACDEFG", "HIKLMN"] for t in held}                       # peptides that know no target
    assert mc.specificity(same, held) == {"A": 0.5, "B": 0.5, "C": 0.5}
    assert mc.specificity({"A": own["A"]}, held) == {}                  # one target: nothing to compare with
    assert set(mc.specificity({**own, "D": ["WWPPWW"]}, held)) == {"A", "B", "C"}     # D has no held-out binders


def test_novel_peptides_are_those_under_80_percent_identity_to_every_training_peptide():
    training = ["PPLPAAKR", "GGWWGGWW"]
    peptides = ["PPLPAAKR", "PPLPAAKE", "PPLPGGGG", "WWWWYYYY", "PPLPAAKRQQ"]
    kept, novel = mc.novel_peptides(peptides, training)
    # identical, 7 of 8 residues, 4 of 8, 2 of 8, and the whole training peptide inside a 10-mer (8 of its 10
    # residues: 0.8, not under it)
    assert kept == ["PPLPGGGG", "WWWWYYYY"] and novel == pytest.approx(2 / 5)
    assert mc.novel_peptides(peptides, training, n=1)[0] == ["PPLPGGGG"]
    assert mc.novel_peptides(peptides, [])[1] == 1.0


def test_mutated_binders_are_novel_variants_made_by_blosum62_substitutions():
    comp = np.full(20, 1 / 20)
    subs = mc.substitution_probs(comp)
    assert subs.shape == (20, 20) and np.allclose(subs.sum(1), 1) and np.all(np.diag(subs) == 0)
    i, l, g = (mc.RESIDUES.index(c) for c in "ILG")
    assert subs[i, l] > 5 * subs[i, g]                  # a conservative substitution is the likely one
    training = ["PPLPPKRYDLLAK", "RSWSKPQWWE", "GGWWAAKKDE"]
    variants = mc.mutated_binders(training, 200, subs, np.random.default_rng(0))
    assert len(variants) == 200 and len(set(variants)) > 150
    assert (mc.best_identity(variants, training) < mc.NOVEL_IDENTITY).all()
    for v in variants:                                  # a variant of a training peptide, not a random peptide
        assert max(mc.identity(v, t) for t in training if len(t) == len(v)) >= 0.6, v
    again = mc.mutated_binders(training, 200, subs, np.random.default_rng(0))
    assert again == variants


def test_specificity_report_judges_generators_at_matched_novelty_with_paired_differences():
    held = {"A": ["WWWPPWWW"], "B": ["KKKDDKKK"], "C": ["EEEEGGEE"]}
    trained = {"A": ["WWPPWWWW"], "B": ["KKDDKKKK"], "C": ["EEGGEEEE"]}
    good = {"A": ["WWPPWAAA", "AWWPPWAA"] * 3, "B": ["KKDDKAAA", "AKKDDKAA"] * 3, "C": ["EEGGEAAA", "AEEGGEAA"] * 3}
    copies = {t: trained[t] * 6 for t in trained}                                  # never novel
    blind = {t: ["ACDFGH", "MNQRST"] * 3 for t in trained}
    rep = ev.specificity_report({"good": good, "copies": copies, "blind": blind}, held, trained, keep=4)
    g = rep["generators"]
    assert g["good"]["specificity"] == 1.0 and g["good"]["kept"] == 4 and g["good"]["unique"] == pytest.approx(1 / 3)
    assert g["copies"]["novel"] == 0.0 and g["copies"]["specificity"] is None     # nothing novel to judge
    assert g["blind"]["specificity"] == 0.5
    assert rep["difference"]["blind"]["value"] == 0.5 and rep["difference"]["copies"]["value"] is None


# --- choosing the guidance ----------------------------------------------------------------------

def figures(guidance, per_target, novel=1.0, unique=1.0, js=0.0):
    return {"guidance": guidance, "specificity": float(np.mean(list(per_target.values()))), "per_target": per_target,
            "novel": novel, "unique": unique, "composition_js": js}


def test_more_guidance_is_taken_only_when_it_is_measurably_more_specific_and_passes_the_guards():
    t = [f"T{i}" for i in range(8)]
    flat = figures(0.0, {x: 0.70 for x in t})
    noisy_gain = figures(1.0, {x: 0.70 + (0.02 if i % 2 else -0.01) for i, x in enumerate(t)})
    clear_gain = figures(2.0, {x: 0.80 + 0.01 * i for i, x in enumerate(t)})
    assert mc.choose_guidance([flat, noisy_gain], 0.1)[0] == 0.0                 # within 2 SE: keep the least
    assert mc.choose_guidance([flat, noisy_gain, clear_gain], 0.1)[0] == 2.0
    copying = {**clear_gain, "novel": 0.85}
    repeating = {**clear_gain, "unique": 0.9}
    caricature = {**clear_gain, "composition_js": 0.2}
    for bad in (copying, repeating, caricature):
        assert mc.choose_guidance([flat, noisy_gain, bad], 0.1)[0] == 0.0
    guidance, why = mc.choose_guidance([{**flat, "novel": 0.5}], 0.1)
    assert guidance == mc.DEFAULT_GUIDANCE and "novel" in why


def test_too_few_validation_targets_keep_the_default_guidance_and_say_why(trained_run):
    run = mc.load_run(trained_run)
    validation = {"binders": {"P11111": ["PPLPAAAA"]}, "trained": {"P11111": ["PPLPGGGG"]}, "background": []}
    tuned = mc.tune_guidance(run, validation)
    assert tuned["guidance"] == mc.DEFAULT_GUIDANCE and "only 1 target(s)" in tuned["why"] and tuned["grid"] == []
    assert mc.tune_score_mix(run, {**validation, "binders": {}})["score_mix"] == mc.DEFAULT_SCORE_MIX


# --- a trained run's tuning, and who uses it -----------------------------------------------------

def test_training_tunes_the_run_on_its_validation_binders(trained_run):
    tuning = json.loads((trained_run / mc.TUNING_FILE).read_text())
    assert tuning["checkpoint"] == "best.pt" and tuning["step"] == mc.load_checkpoint(trained_run / "best.pt")["step"]
    assert tuning["targets"] == len(FIXTURE_MOTIFS)
    assert tuning["guidance"] in mc.GUIDANCE_GRID and [f["guidance"] for f in tuning["grid"]] == list(mc.GUIDANCE_GRID)
    for f in tuning["grid"]:
        assert set(f["per_target"]) == set(FIXTURE_MOTIFS) and 0 <= f["specificity"] <= 1 and 0 <= f["novel"] <= 1
    chosen = next(f for f in tuning["grid"] if f["guidance"] == tuning["guidance"])
    assert chosen["novel"] >= mc.MIN_NOVEL and chosen["unique"] >= mc.MIN_UNIQUE
    assert tuning["score_mix"] in mc.SCORE_MIXES and len(tuning["score_grid"]) == len(mc.SCORE_MIXES)
    assert mc.load_run(trained_run).tuning == tuning


def test_generate_score_and_the_model_file_use_the_runs_own_tuning(trained_run, tmp_path):
    run = mc.load_run(trained_run)
    run.tuning = {**run.tuning, "guidance": 2.0, "score_mix": 0.25}
    target = "P11111"
    own = mc.generate(run, 30, target=target, seed=3)
    assert own == mc.generate(run, 30, target=target, seed=3, guidance=2.0)
    assert own != mc.generate(run, 30, target=target, seed=3, guidance=0.0)
    assert mc.generate(run, 30, label=1, seed=3) == mc.generate(run, 30, label=1, seed=3, guidance=0.0)  # a label: 0
    variants = mc.generate_variants(run, "PPLPAAAAKR", 10, target=target, seed=1)
    assert variants == mc.generate_variants(run, "PPLPAAAAKR", 10, target=target, seed=1, guidance=2.0)
    peptides = ["PPLPAAAAKR", "RSWSKPAAGG", "GGWWAAKKDE"]
    scored = mc.score(run, peptides, target)
    assert [r["score"] for r in scored] == [r["score"] for r in mc.score(run, peptides, target, mix=0.25)]
    for r in scored:
        parts = (r["background_bits"] - r["condition_bits"], r["any_target_bits"] - r["condition_bits"])
        assert r["score"] == pytest.approx(0.25 * parts[0] + 0.75 * parts[1])
    anywhere = mc.score(run, peptides)                          # no target: the background ratio of "any target"
    assert all(r["score"] == pytest.approx(r["background_bits"] - r["condition_bits"]) for r in anywhere)
    with pytest.raises(mc.DataError, match="mix must lie in"):
        mc.score(run, peptides, target, mix=1.5)
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / mc.MODEL_FILE).write_bytes(mc.export_model(trained_run).read_bytes())
    assert mc.load_run(folder).tuning == mc.load_run(trained_run).tuning      # the download keeps the tuning


def test_a_run_already_tuned_at_its_checkpoint_is_not_tuned_again(trained_run, monkeypatch):
    before = (trained_run / mc.TUNING_FILE).read_text()
    monkeypatch.setattr(mc, "tune_guidance", lambda *a, **k: pytest.fail("tuned again"))
    assert mc.tune_run(trained_run, {}) == json.loads(before)


def test_a_run_tuned_by_another_version_of_the_tuning_is_tuned_again(trained_run, monkeypatch):
    path = trained_run / mc.TUNING_FILE
    before = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(before), "version": mc.TUNING_VERSION - 1}))
        monkeypatch.setattr(mc, "tune_guidance", lambda *a, **k: {"guidance": 0.5, "why": "again", "grid": [],
                                                                   "rank": 1, "pool": "mixed", "rank_why": "-",
                                                                   "rank_grid": []})
        monkeypatch.setattr(mc, "tune_score_mix", lambda *a, **k: {"score_mix": 0.5, "why": "again", "grid": []})
        tuned = mc.tune_run(trained_run, {})
        assert tuned["version"] == mc.TUNING_VERSION and tuned["guidance"] == 0.5
        assert json.loads(path.read_text()) == tuned
    finally:
        path.write_text(before)                             # the shared run keeps its own tuning


def test_the_command_line_generates_with_the_runs_own_guidance(trained_run, capsys):
    tuned = mc.load_run(trained_run).tuning["guidance"]
    args = ["generate", "--run-name", trained_run.name, "--checkpoint-dir", str(trained_run.parent), "-n", "20",
            "--target", "Q22222", "--seed", "4"]
    mc.main(args)
    default = capsys.readouterr().out
    mc.main(args + ["--guidance", f"{tuned}"])
    assert capsys.readouterr().out == default
    mc.main(args + ["--guidance", f"{tuned + 1}"])
    assert capsys.readouterr().out != default


# --- the evaluation shows the model beside mutated binders, and marks the run's guidance ------------

def test_the_evaluation_judges_target_samples_beside_mutated_binders_and_composition(trained_run):
    report = ev.evaluate(trained_run, n_samples=40, n_per_target=80, n_draws=1)
    generation = report["conditioning"]["generation"]
    ranked = {"model unranked"} if mc.load_run(trained_run).tuning["rank"] > 1 else set()
    assert set(generation["generators"]) == {"model", "mutated binders", "composition"} | ranked
    assert generation["targets"] == len(FIXTURE_MOTIFS)
    assert set(generation["difference"]) == {"mutated binders", "composition"} | ranked
    assert generation["generators"]["mutated binders"]["novel"] == 1.0            # mutated until novel
    assert report["tuned_guidance"] and report["guidance"] == mc.load_run(trained_run).tuning["guidance"]
    assert report["label_guidance"] == mc.DEFAULT_GUIDANCE
    text = ev.format_report(report)
    assert "mutated binders" in text and "model - mutated binders" in text
    summary = ev.format_summary(report)
    assert "target specificity, matched novelty: model" in summary and "mutated known binders" in summary
    sweep = ev.format_guidance_sweep([{**report, "guidance": 0.0, "tuned_guidance": False},
                                      {**report, "guidance": 1.0, "tuned_guidance": True}])
    assert "| 1 (the run's) |" in sweep and "| 0 |" in sweep and "mutated known binders" in sweep


def test_the_command_lines_score_takes_the_runs_mix_or_the_one_given(trained_run, tmp_path, capsys):
    peptides = tmp_path / "p.txt"
    peptides.write_text("PPLPAAAAKR\nRSWSKPAAGG\n")
    args = ["score", "--run-name", trained_run.name, "--checkpoint-dir", str(trained_run.parent), "--target", "P11111",
            "--input", str(peptides)]
    column = lambda out: [float(line.split("\t")[1]) for line in out.strip().splitlines()[1:]]
    mc.main(args)
    own = column(capsys.readouterr().out)
    assert own == pytest.approx([r["score"] for r in mc.score(trained_run, peptides.read_text().split(), "P11111")],
                                abs=1e-3)
    mc.main(args + ["--mix", "1"])
    background_only = column(capsys.readouterr().out)
    expected = [r["background_bits"] - r["condition_bits"] for r in mc.score(trained_run, ["PPLPAAAAKR", "RSWSKPAAGG"],
                                                                               "P11111")]
    assert background_only == pytest.approx(expected, abs=1e-3)
    with pytest.raises(SystemExit) as stop:
        mc.main(args + ["--mix", "1.5"])
    assert stop.value.code == 2 and "--mix" in capsys.readouterr().err


def test_a_targets_peptides_take_the_lengths_of_its_known_binders(trained_run):
    run = mc.load_run(trained_run)
    run.stats = {**run.stats, "target_length_counts": {"P11111": [0] * 8 + [1, 0, 2] + [0] * 10}}
    probs = mc.length_probs(run, 1, "P11111", mc.MIN_LEN, mc.MAX_LEN)       # two binders of 10, one of 8
    assert probs[8] == pytest.approx(1 / 3) and probs[10] == pytest.approx(2 / 3)
    assert {len(p) for p in mc.generate(run, 30, target="P11111")} == {8, 10}
    label = np.array(run.stats["length_counts"]["1"], float)
    outside = mc.length_probs(run, 1, "P11111", 12, 14)                 # none of its own there: the label's
    assert np.allclose(outside[12:15], label[12:15] / label[12:15].sum())
    assert mc.length_probs(run, 1, None, 4, 20) == pytest.approx(label / label.sum())
    run.stats = {}
    assert np.allclose(mc.length_probs(run, 1, "P11111", 6, 7)[6:8], 0.5)       # no data at all: uniform
