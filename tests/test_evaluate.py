"""Evaluation: the exact bound, the baselines and every metric on inputs with known answers."""
import json
import math

import numpy as np
import pytest
import torch

import mimir_core as mc
import mimir_eval as ev
from conftest import FIXTURE_MOTIFS


@pytest.fixture(scope="module")
def run(trained_run):
    return mc.load_run(trained_run, device="cpu")      # the sums by hand below run on the CPU


def brute_force_kl(Q, Qbar, x0r, xtr, t, p0):
    """KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for one position, by explicit sums over letters."""
    K = Q.shape[-1]
    def true_posterior(x0):
        joint = np.array([Q[t][j, xtr] * Qbar[t - 1][x0, j] for j in range(K)])
        return joint / joint.sum()
    q = true_posterior(x0r)
    p = sum(p0[a] * true_posterior(a) for a in range(K))
    return sum(q[j] * math.log(q[j] / p[j]) for j in range(K) if q[j] > 0)


def test_bound_equals_the_sum_of_its_terms_computed_by_hand(run):
    seqs = ["ACDEFGHIK", "WWYYP", "MKLVVVTTSRRA"]
    x0 = torch.from_numpy(run.vocab.encode(seqs)).long()
    label, target = torch.tensor([1, 0, 1]), torch.tensor([1, 0, 2])
    got = mc.heldout_bound_nats(run.model, run.diffusion, x0, label, target, torch.Generator().manual_seed(7))

    d, Q, Qbar = run.diffusion, run.diffusion.Q.double().numpy(), run.diffusion.Qbar.double().numpy()
    g = torch.Generator().manual_seed(7)                # the same draws of x_t, in the same order
    expected = np.zeros(3)
    x0r = (x0 - 1).clamp_min(0)
    for i, s in enumerate(seqs):                        # prior term: KL(q(x_T | x0) || uniform)
        for pos in range(len(s)):
            qT = Qbar[d.T][x0r[i, pos]]
            expected[i] += sum(v * math.log(v * d.K) for v in qT if v > 0)
    for t in range(1, d.T + 1):
        tb = torch.full((3,), t)
        xt, xtr = d.q_sample(x0, tb, g)
        with torch.no_grad():
            p0 = run.model(xt, tb, label, target).double().softmax(-1).numpy()
        for i, s in enumerate(seqs):
            for pos in range(len(s)):
                expected[i] += brute_force_kl(Q, Qbar, int(x0r[i, pos]), int(xtr[i, pos]), t, p0[i, pos])
    assert np.allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert (got > 0).all()


def test_composition_and_residue_counts_on_hand_made_sets():
    assert ev.composition(["AAAA", "CCCC"])[:2].tolist() == [0.5, 0.5]
    assert ev.composition(["ACDE"])[:4].tolist() == [0.25] * 4 and ev.composition(["ACDE"])[4:].sum() == 0
    assert ev.composition(["AAAX"])[0] == 1.0            # letters outside RESIDUES are not counted
    assert ev.composition(["AAAX"], letters=mc.RESIDUES + "X")[-1] == 0.25
    counts = ev.residue_counts(["AAC", "WY"])
    assert counts.shape == (2, 20) and counts[0, 0] == 2 and counts[0, 1] == 1 and counts[1, -2:].tolist() == [1, 1]
    assert mc.length_counts(["AAAA", "CC", "AAAA"])[[2, 4]].tolist() == [1, 2]


def test_js_divergence_known_values():
    assert ev.js_divergence([1, 0], [1, 0]) == pytest.approx(0.0)
    assert ev.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    m = (p + q) / 2
    expected = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    assert ev.js_divergence(p, q) == pytest.approx(expected)


def test_sample_metrics_on_hand_made_samples():
    samples = ["ACDE", "ACDE", "KKKKK", "ACDXE", "AC"]
    m = ev.sample_metrics(samples, reference=["ACDE", "KKKKK"], train_set={"ACDE"})
    assert m["validity"] == pytest.approx(3 / 5)           # X is not a standard residue; AC is too short
    assert m["uniqueness"] == pytest.approx(4 / 5)
    assert m["novelty"] == pytest.approx(3 / 4)             # of the unique ones, only ACDE was in training
    same = ev.sample_metrics(["ACDE", "KKKKK"], reference=["ACDE", "KKKKK"], train_set=set())
    assert same["js_composition"] == pytest.approx(0, abs=1e-9) and same["js_length"] == pytest.approx(0, abs=1e-9)
    apart = ev.sample_metrics(["WWWWWWWW"], reference=["AAAA"], train_set=set())
    assert apart["js_composition"] == pytest.approx(1.0) and apart["js_length"] == pytest.approx(1.0)


def test_random_baseline_follows_its_composition_and_lengths():
    comp = np.zeros(20)
    comp[[0, 1]] = [0.75, 0.25]
    lengths = np.zeros(mc.MAX_LEN + 1)
    lengths[[6, 8]] = 0.5
    peptides = ev.random_peptides(4000, comp, lengths, seed=0)
    assert set("".join(peptides)) == {"A", "C"} and {len(p) for p in peptides} == {6, 8}
    assert ev.composition(peptides)[0] == pytest.approx(0.75, abs=0.02)


def test_evaluate_reports_every_figure_with_its_baseline(trained_run, tmp_path):
    motifs = tmp_path / "motifs.json"
    kmers = lambda m: "|".join(m[i:i + 3] for i in range(len(m) - 2))     # any 3 letters of the motif
    motifs.write_text(json.dumps([{"target": t, "regex": kmers(m)} for t, m in FIXTURE_MOTIFS.items()]))
    report = ev.evaluate(trained_run, n_samples=200, n_per_target=100, motifs=motifs)
    assert json.loads((trained_run / "evaluation.json").read_text())["guidance"] == report["guidance"]
    assert report["likelihood"]["uniform_bits"] == pytest.approx(math.log2(20))
    for label in ("0", "1"):
        lk = report["likelihood"]["labels"][label]
        assert 3.0 < lk["composition_bits"] < report["likelihood"]["uniform_bits"] and lk["bits_per_residue"] > 0
        assert lk["vs_composition"]["difference"] == pytest.approx(lk["bits_per_residue"] - lk["composition_bits"])
        assert 0 < lk["vs_composition"]["se"] < 0.5 and 0 < lk["order_bits"]["se"] < 0.5
        s = report["samples"][label]
        assert s["model"]["n"] == s["random_baseline"]["n"] == 200 and s["model"]["validity"] == 1.0
    assert set(report["conditioning"]["motifs"]) == set(FIXTURE_MOTIFS)
    rates = report["conditioning"]["motifs"].values()
    assert all(m["training_rate"] == 1.0 for m in rates)
    assert sum(m["target_rate"] for m in rates) > 2 * sum(m["background_rate"] for m in rates) + 0.05
    text = ev.format_report(report)
    summary, likelihood = (part.splitlines() for part in text.split("\n\n")[1:3])
    assert len(summary) == 1 + len(ev.METRICS) and likelihood[0].startswith("Held-out likelihood")
    assert all(m.read(report) in line for m, line in zip(ev.METRICS, summary[1:]))
    verdicts = [line for line in likelihood if line.startswith("  label ")
                and any(v in line for v in ("beats composition", "WORSE than composition", "not distinguishable"))]
    assert len(verdicts) == 2 and "random_baseline" in text and "Q22222" in text and "order enr." in text
    gaps = report["conditioning"]["property_gaps"]
    assert gaps["data"] == "training" and set(gaps) == {"data", *ev.PROPERTY_SCALES}
    for name in ev.PROPERTY_SCALES:
        assert gaps[name]["excess_se"] > 0 and f"  {name} " in text
    fig = ev.plot_evaluation(report, out=tmp_path / "eval.png")
    assert (tmp_path / "eval.png").stat().st_size > 10_000 and len(fig.axes) == 4


def test_guidance_sweep_compares_settings_under_one_seed(trained_run, tmp_path):
    motifs = tmp_path / "motifs.json"
    motifs.write_text(json.dumps([{"target": t, "regex": m[:3]} for t, m in FIXTURE_MOTIFS.items()]))
    reports = ev.guidance_sweep(trained_run, [0.0, 2.0], n_samples=100, n_per_target=60, motifs=motifs)
    assert [r["guidance"] for r in reports] == [0.0, 2.0]
    assert json.loads((trained_run / "guidance_sweep.json").read_text())[1]["guidance"] == 2.0
    plain = ev.sampling_report(mc.load_run(trained_run), *ev.evaluation_split(mc.load_run(trained_run)),
                               n_samples=100, n_per_target=60, guidance=0.0, motifs=motifs)
    assert plain["conditioning"]["motifs"] == reports[0]["conditioning"]["motifs"]     # same seed, same samples
    for m in reports[1]["conditioning"]["motifs"].values():
        assert 0 < m["uniqueness"] <= 1 and 0 <= m["novelty"] <= 1
    assert all(set(r["conditioning"]["property_gaps"]) > set(ev.PROPERTY_SCALES) for r in reports)
    table = ev.format_guidance_sweep(reports).splitlines()
    assert table[0].startswith("| guidance |") and table[2].startswith("| 0 |") and table[3].startswith("| 2 |")
    assert all(row.count("|") == table[0].count("|") for row in table)
    sample_metrics = [m.name for m in ev.METRICS if m.in_sweep]      # guidance changes samples, not the bound
    assert table[0] == "| " + " | ".join(["guidance", *sample_metrics]) + " |" and "bits/res" not in table[0]


def test_charge_and_hydropathy_of_hand_made_peptides():
    assert ev.peptide_property(["KKDA", "RRRE", "AAAA"], "net charge").tolist() == [1.0, 2.0, 0.0]
    assert ev.peptide_property(["IIII", "IR", "XI"], "hydropathy") == pytest.approx([4.5, 0.0, 2.25])


def test_property_gaps_tell_a_caricature_from_a_faithful_condition():
    rng = np.random.default_rng(0)
    peptides = lambda letters, n: ["".join(rng.choice(list(letters), size=10)) for _ in range(n)]
    data = {1: peptides("KAAAAG", 400), 0: peptides("AAAAAG", 400)}          # label 1: about +1.7 charge
    faithful = {1: peptides("KAAAAG", 400), 0: peptides("AAAAAG", 400)}
    caricature = {1: peptides("KKKAAG", 400), 0: peptides("AAAAAG", 400)}   # three times the data's gap
    same = ev.property_gaps(faithful, data)["net charge"]
    assert same["data_gap"] == pytest.approx(10 / 6, abs=0.15) and same["ratio"] == pytest.approx(1.0, abs=0.15)
    assert abs(same["excess"]) < 2 * same["excess_se"]
    pushed = ev.property_gaps(caricature, data)["net charge"]
    assert pushed["ratio"] == pytest.approx(3.0, abs=0.3) and pushed["excess"] > 10 * pushed["excess_se"]
    assert "EXAGGERATE" in ev.verdict(pushed["excess"], pushed["excess_se"], "understate", "EXAGGERATE")
    flipped = ev.property_gaps({1: caricature[0], 0: caricature[1]}, {1: data[0], 0: data[1]})["net charge"]
    assert flipped["excess"] == pytest.approx(pushed["excess"])          # a negative gap, exaggerated, is > 0 too
