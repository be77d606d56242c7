"""Evaluation that composition cannot fool: matched baselines, standard errors, order statistics and the
held-out subset, each on hand-made data with a known answer."""
import itertools
import json
import math
import re

import numpy as np
import pytest
import torch

import mimir_core as mc
import mimir_eval as ev
from conftest import FIXTURE_MOTIFS


def hand_rows(rows):
    """Rows from (label, target, sequence) tuples, lines 2, 3, ..."""
    labels, targets, seqs = zip(*rows)
    return mc.Rows("hand.csv", np.array(labels), list(targets), list(seqs), None, np.arange(2, len(rows) + 2))


def iid_and_motif_peptides(n, seed, motif="RSWK"):
    """n peptides of 8-12 residues drawn i.i.d. from a skewed composition, and the same with `motif`
    written at a random position."""
    comp = np.random.default_rng(99).dirichlet(np.ones(20) * 2)
    lengths = np.zeros(mc.MAX_LEN + 1)
    lengths[8:13] = 0.2
    iid = ev.random_peptides(n, comp, lengths, seed)
    rng = np.random.default_rng(seed)
    cuts = [int(rng.integers(0, len(p) - len(motif) + 1)) for p in iid]
    return iid, [p[:c] + motif + p[c + len(motif):] for p, c in zip(iid, cuts)]


def test_composition_cross_entropy_of_a_small_heldout_set():
    train = hand_rows([(0, "", "AAAC"), (0, "", "AACC"), (1, "T1", "DDDD"), (1, "T1", "DDDE"), (1, "T2", "EEEE")])
    vocab = mc.Vocab(mc.RESIDUES, ["T1", "T2", "T3"])
    comps = ev.condition_compositions(train, vocab)
    letter = {c: i for i, c in enumerate(mc.RESIDUES)}
    # label 0: A 5, C 3 of 8 residues, one pseudo-count per letter: (count + 1) / (8 + 20)
    assert comps["0"][letter["A"]] == pytest.approx(6 / 28) and comps["0"][letter["W"]] == pytest.approx(1 / 28)
    label1 = np.ones(20) / 32
    label1[letter["D"]], label1[letter["E"]] = 8 / 32, 6 / 32          # D 7, E 5 of 12 residues
    assert np.allclose(comps["1"], label1)
    # T1: its own 8 residues (D 7, E 1) plus 20 pseudo-residues of the label-1 composition
    t1 = (np.eye(20)[letter["D"]] * 7 + np.eye(20)[letter["E"]] + 20 * label1) / 28
    assert np.allclose(comps["targets"]["T1"], t1)
    assert np.allclose(comps["targets"]["T3"], label1)                # no training peptide: its label's
    heldout = ["ACCA", "ACDW", "DDEE"]
    own = [ev.condition_composition(comps, 0), ev.condition_composition(comps, 0),
           ev.condition_composition(comps, 1, "T1")]
    bits = ev.composition_bits(vocab.encode(heldout), own)
    expected = [-2 * math.log2(6 / 28) - 2 * math.log2(4 / 28),
                -math.log2(6 / 28) - math.log2(4 / 28) - 2 * math.log2(1 / 28),
                -2 * math.log2(t1[letter["D"]]) - 2 * math.log2(t1[letter["E"]])]
    assert bits == pytest.approx(expected)


def test_paired_standard_error_known_values():
    d = np.array([0.5, -0.1, 0.3, 0.2, 0.0, 0.4])
    mean, se = ev.ratio_and_se(d, np.ones(6))                   # equal weights: the mean and sd / sqrt(n)
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / math.sqrt(6))
    mean, se = ev.ratio_and_se(d * 10, np.full(6, 10))          # per residue, equal lengths: the same
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / math.sqrt(6))
    # unequal lengths: sum / sum, with the ratio estimator's SE written out by hand
    num, den = np.array([2.0, 1.0, 6.0]), np.array([4.0, 2.0, 8.0])
    r = 9 / 14
    resid = [2 - r * 4, 1 - r * 2, 6 - r * 8]
    assert ev.ratio_and_se(num, den) == pytest.approx((r, math.sqrt(1.5 * sum(e * e for e in resid)) / 14))
    # two independent rates: 30/100 over 10/200 = 6, SE by the delta method on the log ratio
    ratio, se = ev.rate_ratio(30, 100, 10, 200)
    assert ratio == pytest.approx(6) and se == pytest.approx(6 * math.sqrt(1 / 30 - 1 / 100 + 1 / 10 - 1 / 200))
    assert ev.rate_ratio(3, 10, 0, 10) == (float("inf"), None) and ev.ratio_and_se([0, 0], [0, 0]) == (None, None)
    assert ev.verdict(-0.10, 0.04, "lower", "higher") == "lower"
    assert ev.verdict(0.10, 0.04, "lower", "higher") == "higher"
    assert ev.verdict(-0.07, 0.04, "lower", "higher").startswith("not distinguishable")


def test_shuffled_real_peptides_have_order_enrichment_about_1_and_real_ones_high():
    _, real = iid_and_motif_peptides(2000, seed=0)
    shuffled = ev.shuffle_residues(real, np.random.default_rng(1))
    assert [sorted(p) for p in shuffled] == [sorted(p) for p in real] and shuffled != real
    pattern = re.compile("RSW|SWK")
    ordered = ev.motif_order(pattern, real)
    assert ordered["rate"] == 1.0 and ordered["order_enrichment"] > 10
    assert ordered["order_gain"] > 10 * ordered["order_gain_se"]
    assert ordered["order_enrichment"] == pytest.approx(1 / ordered["shuffled_rate"])
    orderless = ev.motif_order(pattern, shuffled)
    assert 0.02 < orderless["rate"] < 0.5                     # composition alone still makes the motif
    assert abs(orderless["order_enrichment"] - 1) < 3 * orderless["order_enrichment_se"] < 0.5
    assert abs(orderless["order_gain"]) < 3 * orderless["order_gain_se"]
    assert ev.motif_order(pattern, real, seed=3) != ordered   # the shuffles are seeded...
    assert ev.motif_order(pattern, real) == ordered           # ...and repeatable


def test_shuffled_pair_frequencies_are_the_exact_mean_over_all_orders():
    peptide = "AACDEX"                                        # a repeated letter, and one outside RESIDUES
    orders = ["".join(p) for p in itertools.permutations(peptide)]
    assert np.allclose(ev.pair_features([peptide], shuffled=True)[0], ev.pair_features(orders).mean(0))
    f = ev.pair_features(["ACDE"])[0].reshape(len(ev.PAIR_GAPS), 20, 20)
    letter = {c: i for i, c in enumerate(mc.RESIDUES)}
    assert f[0, letter["A"], letter["C"]] == pytest.approx(1 / 3) and f[2, letter["A"], letter["E"]] == 1.0


def test_kmer_order_gain_is_0_without_order_and_positive_with_it():
    iid_ref, motif_ref = iid_and_motif_peptides(300, seed=1)
    iid, motif = iid_and_motif_peptides(200, seed=2)
    ordered = ev.kmer_order(motif, motif_ref)
    assert ordered["gain"] > 10 * ordered["gain_se"]
    assert ordered["shuffled_distance"] == pytest.approx(ordered["distance"] + ordered["gain"])
    # residues exchangeable within each peptide: gain 0 in expectation, and the SE says how far it strays
    for reference in (motif_ref, iid_ref):
        gains, ses = zip(*[(k["gain"], k["gain_se"]) for k in
                           (ev.kmer_order(iid_and_motif_peptides(200, seed=10 + s)[0], reference) for s in range(40))])
        assert abs(np.mean(gains)) < 3 * np.std(gains) / math.sqrt(40)
        assert 0.6 < np.std(gains, ddof=1) / np.mean(ses) < 1.6
    # the same peptides as the reference: distance about 0
    same = ev.kmer_order(motif_ref[:150], motif_ref[150:])
    assert abs(same["distance"]) < 3 * ordered["gain_se"] and ev.kmer_order(["ACDE"], motif_ref) is None


def test_evaluate_data_with_a_letter_outside_the_vocabulary_names_its_line(trained_run, tmp_path, capsys):
    data = tmp_path / "other.csv"
    data.write_text("label,target,sequence\n0,,ACDEFGHIK\n0,,ACDXFGHIK\n1,P11111,PPLPAAAB\n")
    with pytest.raises(SystemExit) as exit_:
        ev.main(["--run-name", trained_run.name, "--checkpoint-dir", str(trained_run.parent),
                 "--data", str(data)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "line 3: letter 'X' at position 4 is not in this model's vocabulary" in err
    assert "line 4: letter 'B' at position 8" in err and "other.csv" in err and "line 2" not in err
    with pytest.raises(mc.DataError, match="--noise-draws"):
        ev.evaluate(trained_run, n_draws=0)


def test_heldout_subset_is_a_fixed_random_subset_not_file_order(fixture_csv):
    pick = mc.heldout_subset(1000, 100)
    assert len(set(pick.tolist())) == 100 and (np.diff(pick) > 0).all()
    assert pick.min() < 100 < 900 < pick.max()                # spread over the file, not its first rows
    assert (mc.heldout_subset(1000, 100) == pick).all() and (mc.heldout_subset(50, 100) == np.arange(50)).all()
    # the per-epoch held-out loss (and so best.pt) scores exactly these rows
    rows = mc.load_rows(fixture_csv)
    vocab = mc.Vocab.from_rows(rows)
    cfg = mc.make_config("tiny", max_val_rows=40)
    model, diffusion = mc.build_model(cfg, vocab, "cpu"), mc.D3PM(len(vocab.letters), cfg.n_steps)
    val_idx = np.arange(len(rows.sequences))
    capped = mc.heldout_losses(model, diffusion, mc.DeviceData(rows, vocab, val_idx, "cpu"), cfg)
    chosen = mc.DeviceData(rows, vocab, val_idx[mc.heldout_subset(len(val_idx), 40)], "cpu")
    assert capped == mc.heldout_losses(model, diffusion, chosen, mc.make_config("tiny"))


def test_likelihood_report_scores_the_subset_against_each_rows_own_composition(trained_run):
    run = mc.load_run(trained_run)
    val, train = ev.evaluation_split(run)
    report = ev.likelihood_report(run, val, train, max_rows=30, n_draws=1)
    idx = np.flatnonzero(val.labels == 0)[mc.heldout_subset(int((val.labels == 0).sum()), 30)]
    counts = np.zeros(20)
    for seq, label in zip(train.sequences, train.labels):
        if label == 0:
            for c in seq:
                counts[mc.RESIDUES.index(c)] += 1
    p = (counts + 1) / (counts.sum() + 20)
    bits = sum(-math.log2(p[mc.RESIDUES.index(c)]) for i in idx for c in val.sequences[i])
    lk = report["labels"]["0"]
    assert lk["rows"] == 30 and lk["composition_bits"] == pytest.approx(bits / sum(len(val.sequences[i]) for i in idx))
    assert report["noise_draws"] == 1 and report["matched_baseline"] is True
    for lk in report["labels"].values():
        assert lk["order_bits"]["difference"] == pytest.approx(lk["shuffled_bits"] - lk["bits_per_residue"])


def test_bound_averages_its_noise_draws_and_scores_shuffled_peptides(trained_run):
    run = mc.load_run(trained_run, device="cpu")
    x0 = torch.from_numpy(run.vocab.encode(["ACDEFGHIK", "WWYYP"])).long()
    label, target = torch.tensor([1, 0]), torch.tensor([1, 0])
    g = torch.Generator().manual_seed(3)
    one = [mc.heldout_bound_nats(run.model, run.diffusion, x0, label, target, g) for _ in range(3)]
    three = mc.heldout_bound_nats(run.model, run.diffusion, x0, label, target, torch.Generator().manual_seed(3), n_draws=3)
    assert torch.allclose(three, sum(one) / 3, atol=1e-5) and not torch.allclose(one[0], one[1])
    # shuffled: a peptide of one letter is its own shuffle, so with the same noise its bits are the same
    rows = hand_rows([(1, "P11111", "KKKKKKK"), (0, "", "ACDEFGHIK")])
    real = ev.peptide_bits(run, rows, torch.Generator().manual_seed(5), n_draws=2)
    shuffled = ev.peptide_bits(run, rows, torch.Generator().manual_seed(5), n_draws=2,
                               shuffle_rng=np.random.default_rng(0))
    assert shuffled[0] == pytest.approx(real[0], abs=1e-4) and shuffled[1] != pytest.approx(real[1], abs=1e-3)


def test_sample_baselines_are_matched_to_their_condition(trained_run, tmp_path):
    motifs = tmp_path / "motifs.json"
    motifs.write_text(json.dumps([{"target": t, "regex": m} for t, m in FIXTURE_MOTIFS.items()]))
    run = mc.load_run(trained_run)
    val, train = ev.evaluation_split(run)
    report = ev.sampling_report(run, val, train, n_samples=60, n_per_target=30, motifs=motifs)
    comps = ev.condition_compositions(train, run.vocab)
    for label in ("0", "1"):
        s = report["samples"][label]
        assert np.allclose(s["baseline_composition"], comps[label][:20] / comps[label][:20].sum())
        assert s["composition_vs_baseline"]["se"] > 0
        assert set(s["kmer_order"]) == {"model", "random_baseline", "training"}
    baselines = [report["samples"][label]["baseline_composition"] for label in ("0", "1")]
    assert not np.allclose(*baselines)
    for target, m in report["conditioning"]["motifs"].items():     # every training peptide carries its motif
        assert m["training_rate"] == 1.0 and m["training_order_enrichment"] > 3 and m["training_specificity"] > 10
        assert m["n"] == 30 and 0 <= m["baseline_rate"] < 0.5 and m["order_gain_se"] is not None
