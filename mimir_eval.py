"""Mimir's evaluation: how good is a trained run, against what it must beat?

    python mimir_eval.py --run-name NAME [--checkpoint-dir DIR] [--data CSV] [-n 1000] [--guidance S [S ...]]
                         [--motifs JSON] [--noise-draws 16] [--seed 0] [--checkpoint best|last] [--device auto]

Every verdict compares the model with a baseline matched to the same condition, on the same peptides,
and carries its standard error (or a bootstrap interval); a difference within 2 SE reads "not
distinguishable".

Map (top to bottom):
  Statistics      ratio_and_se, rate_ratio, mean_gap, verdict, paired_auroc (plain numpy)
  Peptide figures composition, lengths, shuffles, motif order, residue-pair (k-mer) order, charge, hydropathy
  Baselines       each condition's training composition (composition_bits), matched random peptides,
                  composition log-odds, known binders mutated by hand (mutated_binders)
  Reports         likelihood_report, sampling_report (samples, k-mer order, label and motif conditioning,
                  the targets' samples beside mutated binders: generation_report), score_auroc_report;
                  evaluate() and guidance_sweep() run them and write JSON
  Metrics         METRICS: the headline figures, each read from a report in one place
  Text and plots  format_report, format_guidance_sweep, metrics_table, plot_evaluation
  Command line    main()

It imports mimir_core (the engine: loading a run, sampling, the bound and the score); mimir_core
imports nothing of this module. To add a metric to the summary, the guidance sweep and the ablation
table at once, add a Metric to METRICS.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mimir_core import (BLOSUM62, BLOSUM62_INDEX, DEFAULT_SCORE_DRAWS, DEMO_DATA, DEMO_MOTIFS, GUIDANCE, MAX_DRAWS,
                        MAX_EVAL_SAMPLES, MAX_LEN, MIN_LEN, NOVEL_IDENTITY, PAD, RESIDUES, SEED, UNKNOWN_TARGET,
                        DataError, Rows, Run, Vocab, add_model_args, add_run_args, auroc_wins, best_identity,
                        binders_by_target, condition_bits, generate, heldout_bound_nats, heldout_subset,
                        js_divergence, length_counts, length_probs, letter_counts, load_rows, load_run,
                        local_alignment_scores, log, mixed_score, mutated_binders, nearest_neighbour_scores,
                        novel_peptides, number_in, pyplot, row_references, run_command, run_dir_arg, run_guidance,
                        run_ranking, run_score_mix, score_references, specificity, split_indices, standard_composition,
                        substitution_probs, subset_rows, summarize_problems, write_json)

# =============================================================================================
# Statistics: every verdict is a difference or a ratio with its standard error
# =============================================================================================


def ratio_and_se(num, den) -> tuple[float, float]:
    """sum(num) / sum(den) and its standard error, the rows (num_i, den_i) being independent units
    (the delta method for a ratio estimator). Bits per residue: num = a peptide's bits, den = its
    residues; a paired difference: num = model bits - baseline bits of the same peptide; order
    enrichment: num = a peptide's motif match, den = its mean match after shuffles."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    if den.sum() == 0:                              # None: undefined (JSON null)
        return (float("inf") if num.sum() > 0 else None), None
    r = num.sum() / den.sum()
    n = len(num)
    se = float(math.sqrt(n / (n - 1) * np.sum((num - r * den) ** 2)) / den.sum()) if n > 1 else None
    return float(r), se

def rate_ratio(hits_a: float, n_a: int, hits_b: float, n_b: int) -> tuple[float, float]:
    """(hits_a / n_a) / (hits_b / n_b) for two independent sets of peptides, and its standard error
    (delta method on the log ratio)."""
    if hits_b == 0:
        return (float("inf") if hits_a > 0 else None), None
    ratio = float((hits_a / n_a) / (hits_b / n_b))
    if hits_a == 0:
        return 0.0, None
    return ratio, ratio * math.sqrt(max(1 / hits_a - 1 / n_a, 0) + max(1 / hits_b - 1 / n_b, 0))

def mean_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None]:
    """mean(a) - mean(b) of two independent sets, and its standard error (None below 2 values a set)."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else None
    return float(a.mean() - b.mean()), se

def verdict(diff: float, se: float, below: str, above: str) -> str:
    """`below` when diff < 0 by more than 2 standard errors, `above` when > 0 by more, else not distinguishable."""
    if diff is None:
        return "-"
    if se is None or abs(diff) <= 2 * se:
        return "not distinguishable (within 2 SE)"
    return below if diff < 0 else above

def auroc_bootstrap(scores: dict, n_pos: int, n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict, int]:
    """AUROC of several scorers on the same rows (scores maps a scorer's name to its scores of the n_pos
    positives followed by the negatives), and n_boot bootstrap AUROCs of each: positives and negatives
    resampled apart, with the same resamples for every scorer, so differences between scorers are paired.
    Returns (AUROCs, bootstrap AUROCs (n_boot,) each, the number of negatives)."""
    rng = np.random.default_rng(seed)
    wins = {k: auroc_wins(v[:n_pos], v[n_pos:]) for k, v in scores.items()}
    n_neg = next(iter(wins.values())).shape[1]
    w_pos = rng.multinomial(n_pos, np.full(n_pos, 1 / n_pos), size=n_boot)
    w_neg = rng.multinomial(n_neg, np.full(n_neg, 1 / n_neg), size=n_boot)
    boot = {k: ((w_pos @ m) * w_neg).sum(1) / (n_pos * n_neg) for k, m in wins.items()}
    return {k: float(m.mean()) for k, m in wins.items()}, boot, n_neg


def auroc_summary(auroc: dict, boot: dict, n_pos: int, n_neg: int) -> dict:
    """Each scorer's AUROC with its 95% bootstrap interval, and the first scorer's difference from each other
    one with the interval of the paired bootstrap differences."""
    interval = lambda x: [float(v) for v in np.percentile(x, [2.5, 97.5])]
    first = next(iter(auroc))
    out = {"positives": n_pos, "negatives": n_neg, "difference": {}}
    for k in auroc:
        out[k] = {"auroc": auroc[k], "interval": interval(boot[k])}
        if k != first:
            out["difference"][k] = {"value": auroc[first] - auroc[k], "interval": interval(boot[first] - boot[k])}
    return out


def paired_auroc(scores: dict, n_pos: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """auroc_summary of scorers on the same rows (see auroc_bootstrap)."""
    auroc, boot, n_neg = auroc_bootstrap(scores, n_pos, n_boot, seed)
    return auroc_summary(auroc, boot, n_pos, n_neg)


def weighted_auroc(parts: list) -> dict:
    """auroc_summary of AUROCs averaged over targets, each weighted by its positives: parts holds each
    target's (positives, negatives, AUROCs, bootstrap AUROCs). The targets' resamples are independent, so
    the weighted mean of their bootstrap AUROCs is a bootstrap of the weighted AUROC (paired over scorers)."""
    weights = np.array([n_pos for n_pos, _, _, _ in parts], dtype=float)
    weights /= weights.sum()
    mean = lambda values: sum(w * v for w, v in zip(weights, values))
    auroc = {k: float(mean([a[k] for _, _, a, _ in parts])) for k in parts[0][2]}
    boot = {k: mean([b[k] for _, _, _, b in parts]) for k in parts[0][2]}
    return auroc_summary(auroc, boot, sum(p[0] for p in parts), sum(p[1] for p in parts))


# =============================================================================================
# Peptide figures: composition, lengths, order, properties
# =============================================================================================


def residue_counts(sequences, letters: str = RESIDUES) -> np.ndarray:
    """(N, len(letters)): how often each letter occurs in each peptide (other letters are not counted)."""
    tokens = Vocab(letters, []).encode(sequences)
    return letter_counts(tokens, np.arange(len(sequences)), len(sequences), len(letters))


def composition(sequences, letters: str = RESIDUES) -> np.ndarray:
    """Residue frequencies over `letters` (letters outside it are not counted)."""
    counts = letter_counts(Vocab(letters, []).encode(sequences), np.zeros(len(sequences)), 1, len(letters))[0]
    return counts / max(counts.sum(), 1)


def length_distribution(sequences) -> np.ndarray:
    counts = length_counts(sequences)[:MAX_LEN + 1].astype(float)
    return counts / max(counts.sum(), 1)


def sample_metrics(samples: list, reference: list, train_set: set) -> dict:
    """Quality figures of generated peptides against held-out `reference` peptides of the same condition."""
    valid = [s for s in samples if MIN_LEN <= len(s) <= MAX_LEN and set(s) <= set(RESIDUES)]
    unique = set(samples)
    return {"n": len(samples), "validity": len(valid) / max(len(samples), 1),
            "uniqueness": len(unique) / max(len(samples), 1),
            "novelty": len(unique - train_set) / max(len(unique), 1),
            "js_composition": js_divergence(composition(samples) + 1e-12, composition(reference) + 1e-12),
            "js_length": js_divergence(length_distribution(samples) + 1e-12, length_distribution(reference) + 1e-12)}

N_SHUFFLES = 10                 # seeded permutations per peptide for a shuffled motif rate

def shuffle_residues(sequences, rng) -> list:
    """Each peptide with its residues in a random order: the same length and composition, no order."""
    return ["".join(rng.permutation(list(s))) for s in sequences]

def motif_hits(pattern, sequences) -> np.ndarray:
    """(N,) 1.0 where a peptide carries the motif (a compiled regex), else 0.0."""
    return np.array([bool(pattern.search(s)) for s in sequences], dtype=float)

def motif_order(pattern, sequences, n_shuffles: int = N_SHUFFLES, seed: int = 0) -> dict:
    """A motif's rate in peptides, its rate after shuffling each peptide's residues (the mean over
    n_shuffles seeded permutations), and order enrichment = rate / shuffled rate with its SE. Residues
    that carry a motif only by composition give about 1; a motif written in order gives far more.
    order_gain = rate - shuffled rate with its SE (paired per peptide) decides whether order is there:
    it stays defined when no shuffled peptide carries the motif."""
    rng = np.random.default_rng(seed)
    hits = motif_hits(pattern, sequences)
    shuffled = np.mean([motif_hits(pattern, shuffle_residues(sequences, rng)) for _ in range(n_shuffles)], axis=0) \
        if len(sequences) else np.zeros(0)
    enrichment, se = ratio_and_se(hits, shuffled)
    gain, gain_se = ratio_and_se(hits - shuffled, np.ones(len(hits)))
    return {"n": len(sequences), "rate": float(hits.mean()) if len(hits) else 0.0,
            "shuffled_rate": float(shuffled.mean()) if len(hits) else 0.0,
            "order_enrichment": enrichment, "order_enrichment_se": se, "order_gain": gain, "order_gain_se": gain_se}

PAIR_GAPS = (1, 2, 3)           # residue pairs 1, 2 and 3 apart: dipeptides and pairs around 1-2 residues

def pair_features(sequences, shuffled: bool = False) -> np.ndarray:
    """(N, len(PAIR_GAPS) * 400): each peptide's frequencies of residue pairs (a, b) at each distance in
    PAIR_GAPS, per pair of positions. With `shuffled`, their exact expectation over random orders of the
    peptide's residues: c_a c_b / (L (L - 1)), c_a (c_a - 1) / (L (L - 1)) for a = b, the same at every
    distance. Letters outside RESIDUES count in L but in no pair."""
    n = len(sequences)
    idx = Vocab(RESIDUES, []).encode(sequences).astype(np.int64) - 1          # -1: PAD or a rare letter
    lengths = np.fromiter(map(len, sequences), dtype=np.float64, count=n)
    rows = np.arange(n)[:, None]
    if shuffled:
        counts = residue_counts(sequences).astype(float)
        pairs = counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(20)
        return np.tile(pairs.reshape(n, 400) / (lengths * (lengths - 1))[:, None], len(PAIR_GAPS))
    blocks = []
    for gap in PAIR_GAPS:
        a, b = idx[:, :-gap], idx[:, gap:]
        ok = (a >= 0) & (b >= 0)
        flat = (np.broadcast_to(rows, a.shape) * 400 + a * 20 + b)[ok]
        blocks.append(np.bincount(flat, minlength=n * 400).reshape(n, 400) / np.maximum(lengths - gap, 1)[:, None])
    return np.concatenate(blocks, axis=1)

MAX_KMER_SAMPLES = 2000         # the k-mer statistic holds an n x n matrix

def kmer_order(samples, reference) -> dict:
    """Distance of the samples' residue-pair frequencies (pair_features) to the reference peptides',
    against the same distance for the samples with their residues shuffled. A distance is an unbiased
    estimate of the squared distance between the two sets' mean pair frequencies (its pairs i != j
    only), so sets drawn alike score 0 in expectation, whatever their size. gain = shuffled distance -
    distance: positive when the samples' order brings them closer to the reference. A set without order
    (residues exchangeable within each peptide) has gain 0 in expectation by construction, since its
    pairs' mean is then its shuffled pairs' mean. The standard error is the U-statistic's (Hoeffding)
    for the samples plus the reference's linear share. None when either set has fewer than 2 peptides."""
    samples = list(samples)[:MAX_KMER_SAMPLES]
    if len(samples) < 2 or len(reference) < 2:
        return None
    A, B, H = pair_features(samples), pair_features(samples, shuffled=True), pair_features(reference)
    n, m = len(A), len(H)
    mean_a, mean_b, mean_h = A.mean(0), B.mean(0), H.mean(0)
    u_h = (m * m * mean_h @ mean_h - (H * H).sum()) / (m * (m - 1))      # mean <h_i, h_j> over i != j
    off = ~np.eye(n, dtype=bool)
    gram_a, gram_b = A @ A.T, B @ B.T
    shift = (B - A) @ mean_h
    kernel = gram_b - gram_a - shift[:, None] - shift[None, :]        # gain = mean over i != j, given H
    gain = float(kernel[off].mean())
    h1 = (kernel.sum(1) - np.diag(kernel)) / (n - 1)                # each sample's mean kernel
    sigma2 = kernel[off].var()
    sigma1 = max(h1.var(ddof=1) - sigma2 / (n - 1), 0.0)                # h1's spread, less its own noise
    var = (4 * (n - 2) * sigma1 + 2 * sigma2) / (n * (n - 1))
    var += 4 * (H @ (mean_b - mean_a)).var(ddof=1) / m                # the reference's share: linear in H
    distance = float(gram_a[off].mean() + u_h - 2 * mean_a @ mean_h)
    return {"n": n, "reference_n": m, "distance": distance, "shuffled_distance": distance + gain,
            "gain": gain, "gain_se": math.sqrt(max(var, 0.0))}

# --- caricature: does a condition's samples differ from background as much as its data do? --------

# Per-residue scales over RESIDUES: net charge at pH 7 (K, R +1; D, E -1; H mostly uncharged) and
# Kyte-Doolittle hydropathy. A peptide's charge is the sum over its residues, its hydropathy the mean.
PROPERTY_SCALES = {
    "net charge": (dict(K=1.0, R=1.0, D=-1.0, E=-1.0), False),
    "hydropathy": (dict(A=1.8, R=-4.5, N=-3.5, D=-3.5, C=2.5, Q=-3.5, E=-3.5, G=-0.4, H=-3.2, I=4.5, L=3.8, K=-3.9,
                        M=1.9, F=2.8, P=-1.6, S=-0.8, T=-0.7, W=-0.9, Y=-1.3, V=4.2), True),
}

def peptide_property(sequences, name: str) -> np.ndarray:
    """(N,) each peptide's value of a PROPERTY_SCALES property (letters outside RESIDUES count 0)."""
    scale, per_residue = PROPERTY_SCALES[name]
    values = residue_counts(sequences) @ np.array([scale.get(c, 0.0) for c in RESIDUES])
    return values / np.maximum([len(s) for s in sequences], 1) if per_residue else values

def property_gaps(samples: dict, data: dict) -> dict:
    """Per property: the label-1 minus label-0 gap of the samples' means and of the data's, each with its SE,
    and `excess` = (samples' gap - data's gap) signed so that > 0 means the samples exaggerate the data's
    gap (same direction, larger); ratio = samples' gap / data's gap. Guidance that pushes a condition away
    from the unconditional model makes such a caricature: charge or hydropathy beyond the data's."""
    out = {}
    for name in PROPERTY_SCALES:
        value = lambda sets, label: peptide_property(sets[label], name)
        gap, gap_se = mean_gap(value(samples, 1), value(samples, 0))
        data_gap, data_se = mean_gap(value(data, 1), value(data, 0))
        direction = 1.0 if data_gap >= 0 else -1.0
        out[name] = {"samples_gap": gap, "samples_gap_se": gap_se, "data_gap": data_gap, "data_gap_se": data_se,
                     "ratio": gap / data_gap if data_gap else None,
                     "ratio_se": abs(gap / data_gap) * math.hypot(gap_se / gap, data_se / data_gap)
                     if data_gap and gap and None not in (gap_se, data_se) else None,
                     "excess": direction * (gap - data_gap),
                     "excess_se": math.hypot(gap_se, data_se) if None not in (gap_se, data_se) else None}
    return out

# =============================================================================================
# Baselines: what composition alone achieves
# =============================================================================================

COMPOSITION_PRIOR = 20          # pseudo-residues: a target's composition leans on its label's by this weight

def condition_compositions(train_rows: Rows, vocab: Vocab) -> dict:
    """Residue composition over vocab.letters of each condition in training: "0" and "1" (one
    pseudo-count per letter, so no residue gets probability 0) and, under "targets", every target
    (its training residues plus COMPOSITION_PRIOR pseudo-residues of the label-1 composition, so a
    target with few training peptides falls back on its label's)."""
    tokens, K = vocab.encode(train_rows.sequences), len(vocab.letters)
    by_label = letter_counts(tokens, train_rows.labels, 2, K)
    comps = {str(l): (by_label[l] + 1) / (by_label[l].sum() + K) for l in (0, 1)}
    per_target = letter_counts(tokens, vocab.target_ids(train_rows.targets), vocab.num_targets, K)
    prior = COMPOSITION_PRIOR * comps["1"]
    comps["targets"] = {t: (per_target[i + 1] + prior) / (per_target[i + 1].sum() + COMPOSITION_PRIOR)
                        for i, t in enumerate(vocab.targets)}
    return comps


def baseline_compositions(run: Run, train_rows: Rows | None) -> dict:
    """condition_compositions of the run's training rows; when its data file is gone, the pooled
    composition stored with the run for every condition ("matched": False says so)."""
    if train_rows is not None:
        return {**condition_compositions(train_rows, run.vocab), "matched": True}
    pooled = np.asarray(run.stats["composition"], dtype=float)
    return {"0": pooled, "1": pooled, "targets": {}, "matched": False}

def condition_composition(comps: dict, label: int, target: str | None = None) -> np.ndarray:
    return comps["targets"].get(target, comps[str(label)]) if target else comps[str(label)]

def composition_bits(tokens, comps_per_row) -> np.ndarray:
    """(N,) bits of each peptide (tokens (N, MAX_LEN)) under residues drawn i.i.d. from its own
    composition (comps_per_row (N, K)): the cross-entropy a composition-only model pays."""
    tokens = np.asarray(tokens, dtype=np.int64)
    logp = np.log2(np.asarray(comps_per_row, float))
    picked = np.take_along_axis(logp, (tokens - 1).clip(0), axis=1)
    return -(picked * (tokens != PAD)).sum(1)

def random_peptides(n: int, comp, length_p, seed: int = 0) -> list:
    """The floor: residues drawn i.i.d. from a composition over RESIDUES, lengths from length_p."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice(MAX_LEN + 1, size=n, p=length_p)
    letters = np.array(list(RESIDUES))
    return ["".join(rng.choice(letters, size=k, p=comp)) for k in lengths]

def composition_log_odds(target_seqs: list, background_seqs: list, letters: str) -> dict:
    """letter -> log2 of its frequency in target_seqs over background_seqs (add-one smoothed counts)."""
    def freqs(seqs):
        counts = composition(seqs, letters) * sum(map(len, seqs)) + 1
        return counts / counts.sum()
    return dict(zip(letters, np.log2(freqs(target_seqs) / freqs(background_seqs)).tolist()))

# =============================================================================================
# Reports: likelihood, samples, motifs, scores
# =============================================================================================


def read_motifs(path) -> list[dict]:
    """Motif classes from a JSON list of {"target", "elm_class", "description", "regex", "anchor"}.
    A c_terminal regex must end with '$' so it can only match at the protein's last residue."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        motifs = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(motifs, list) or not motifs:
        raise DataError(f"{path}: expected a non-empty list of motif classes")
    for i, m in enumerate(motifs):
        where = f"{path}, motif {i + 1}"
        if not isinstance(m, dict) or not m.get("target") or not m.get("regex"):
            raise DataError(f"{where}: needs a 'target' and a 'regex'")
        if m.get("anchor", "internal") not in ("internal", "c_terminal"):
            raise DataError(f"{where}: anchor '{m['anchor']}' is not 'internal' or 'c_terminal'")
        if m.get("anchor") == "c_terminal" and not m["regex"].endswith("$"):
            raise DataError(f"{where}: a c_terminal regex must end with '$'")
        try:
            re.compile(m["regex"])
        except re.error as e:
            raise DataError(f"{where}: bad regex '{m['regex']}' ({e})") from e
    return motifs

def load_motifs(path=DEMO_MOTIFS) -> dict:
    """target -> compiled regex, from a motifs JSON (see read_motifs)."""
    return {m["target"]: re.compile(m["regex"]) for m in read_motifs(path)}

def evaluation_split(run: Run, data=None) -> tuple[Rows, Rows | None]:
    """(held-out rows, training rows): the run's own split of its data, or all of `data` held out when
    it is another file (the training rows then come from the run's data, when that file is still there).
    A file with letters the model never saw is refused: it could neither score nor compare them. The run's
    own data are read as training read them (without the rows it skipped, when it was told to skip)."""
    train_path = run.cfg.data or str(DEMO_DATA)
    skipped = run.stats.get("skip_invalid", False)
    rows = load_rows(data) if data else load_rows(train_path, skip_invalid=skipped)
    if data:
        foreign = re.compile(f"[^{run.vocab.letters}]")
        problems = [(line, f"letter '{bad.group()}' at position {bad.start() + 1} is not in this model's "
                           f"vocabulary ({run.vocab.letters})")
                    for line, seq in zip(rows.lines.tolist(), rows.sequences) if (bad := foreign.search(seq))]
        if problems:
            raise DataError(summarize_problems(rows.path, problems) + "\nRemove these rows (or evaluate a model "
                            "trained on data with these letters).")
    if data and Path(data).resolve() != Path(train_path).resolve():
        train_rows = load_rows(train_path, skip_invalid=skipped) if Path(train_path).exists() else None
        if train_rows is not None:
            train_rows = subset_rows(train_rows, split_indices(train_rows, run.cfg.val_fraction)[0])
        val = rows
    else:
        train_idx, val_idx = split_indices(rows, run.cfg.val_fraction)
        val, train_rows = subset_rows(rows, val_idx), subset_rows(rows, train_idx)
    unknown = sorted({t for t in val.targets if t} - set(run.vocab.targets))
    if unknown:
        raise DataError(f"{val.path}: targets the model was not trained on: {', '.join(unknown[:10])}")
    return val, train_rows

MIN_TARGET_ROWS = 5             # held-out rows a target needs for likelihood figures of its own (with their SE)
DEFAULT_NOISE_DRAWS = 16         # on the demo, label 1's paired SE: about 0.07 bits with 1 draw, 0.02 with 16

def peptide_bits(run: Run, rows: Rows, generator=None, n_draws: int = 1, shuffle_rng=None) -> np.ndarray:
    """(N,) the bound in bits of each row's peptide given its label and target, averaged over n_draws
    noise draws. With shuffle_rng: of the peptide with its residues shuffled, a new shuffle per draw
    (so the average is over shuffles too)."""
    label, target_id = torch.from_numpy(rows.labels), torch.from_numpy(run.vocab.target_ids(rows.targets))
    if shuffle_rng is None:
        x0 = torch.from_numpy(run.vocab.encode(rows.sequences))
        nats = heldout_bound_nats(run.model, run.diffusion, x0, label, target_id, generator, n_draws=n_draws,
                                  refs=row_references(run, rows.labels, rows.targets))
        return nats.numpy() / math.log(2)
    shuffled = lambda: Rows(rows.path, rows.labels, rows.targets, shuffle_residues(rows.sequences, shuffle_rng),
                            rows.sources, rows.lines)
    return np.mean([peptide_bits(run, shuffled(), generator) for _ in range(n_draws)], axis=0)

def likelihood_summary(model_bits, baseline_bits, shuffled_bits, residues) -> dict:
    """Bits per residue of one group of peptides: the model's bound, the composition baseline on the
    same peptides, their paired difference, and order bits (bound on the peptides shuffled - on them
    as they are), each difference with its standard error over peptides."""
    model, se = ratio_and_se(model_bits, residues)
    vs_comp = ratio_and_se(model_bits - baseline_bits, residues)
    order = ratio_and_se(shuffled_bits - model_bits, residues)
    return {"rows": len(residues), "residues": int(residues.sum()), "bits_per_residue": model,
            "bits_per_residue_se": se, "composition_bits": ratio_and_se(baseline_bits, residues)[0],
            "vs_composition": {"difference": vs_comp[0], "se": vs_comp[1]},
            "shuffled_bits": ratio_and_se(shuffled_bits, residues)[0],
            "order_bits": {"difference": order[0], "se": order[1]}}

def likelihood_report(run: Run, val: Rows, train_rows: Rows | None, seed: int = 0, max_rows: int = 5000,
                      n_draws: int = DEFAULT_NOISE_DRAWS) -> dict:
    """Per label, and per target with MIN_TARGET_ROWS held-out rows: the held-out bound in bits per
    residue beside the cross-entropy of the same rows under their own condition's training composition
    (a label-0 row: the label-0 composition; a label-1 row: its target's), with the paired difference
    and its SE; and order bits, the bound on the same rows with their residues shuffled minus the
    bound on them as they are. Each bound averages n_draws noise draws per term (the shuffled one, one
    draw on each of n_draws shuffles). At most max_rows rows per label: heldout_subset's."""
    g = torch.Generator(device=run.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    comps = baseline_compositions(run, train_rows)
    out = {"noise_draws": n_draws, "uniform_bits": math.log2(len(run.vocab.letters)),
           "matched_baseline": comps["matched"], "labels": {}, "targets": {}}
    for label in (0, 1):
        idx = np.flatnonzero(val.labels == label)
        if len(idx) == 0:
            continue
        part = subset_rows(val, idx[heldout_subset(len(idx), max_rows)])
        tokens = run.vocab.encode(part.sequences)
        model_bits = peptide_bits(run, part, g, n_draws)
        shuffled_bits = peptide_bits(run, part, g, n_draws, shuffle_rng=rng)
        comp_bits = composition_bits(tokens, [condition_composition(comps, label, t) for t in part.targets])
        residues = (tokens != PAD).sum(1)
        out["labels"][str(label)] = likelihood_summary(model_bits, comp_bits, shuffled_bits, residues)
        for target in sorted(set(part.targets) - {""}):
            rows = np.array([t == target for t in part.targets])
            if rows.sum() >= MIN_TARGET_ROWS:
                out["targets"][target] = likelihood_summary(model_bits[rows], comp_bits[rows], shuffled_bits[rows],
                                                            residues[rows])
    return out

def composition_gap(samples, baseline, reference, n_boot: int = 200, seed: int = 0) -> dict:
    """JS(samples, reference) - JS(baseline, reference) in composition, and its bootstrap standard
    error (the peptides of all three sets resampled): negative when the samples are the closer."""
    counts = [residue_counts(s) for s in (samples, baseline, reference)]
    def gap(picks):
        comp = [c[p].sum(0) + 1e-12 for c, p in zip(counts, picks)]
        return js_divergence(comp[0], comp[2]) - js_divergence(comp[1], comp[2])
    rng = np.random.default_rng(seed)
    boot = [gap([rng.integers(0, len(c), len(c)) for c in counts]) for _ in range(n_boot)]
    return {"difference": gap([np.arange(len(c)) for c in counts]), "se": float(np.std(boot, ddof=1))}

def sampling_report(run: Run, val: Rows, train_rows: Rows | None, n_samples: int = 1000, n_per_target: int = 200,
                    seed: int = 0, guidance: float | None = None, motifs=None, max_rows: int = 5000) -> dict:
    """Samples per label against held-out peptides and a matched random baseline (residues and lengths
    drawn from the same condition's training composition and lengths), with k-mer order (kmer_order)
    for the samples, the baseline and the training peptides. Conditioning: label-1 vs label-0
    composition distance and, for each motif target, the motif's rate in the target's samples, in a
    baseline matched to the target, in background samples, its order enrichment and its specificity,
    each beside the same figure for the target's training peptides; and property_gaps, the label-1 vs
    label-0 gaps in charge and hydropathy of the samples beside the training peptides'."""
    train_set = set(train_rows.sequences) if train_rows else set()
    comps = baseline_compositions(run, train_rows)
    rng = np.random.default_rng(seed)
    reference = {l: [s for s, x in zip(val.sequences, val.labels.tolist()) if x == l] for l in (0, 1)}
    samples, training_sets = {}, {}
    report = {"matched_baseline": comps["matched"], "samples": {}, "conditioning": {}}
    for label in (0, 1):
        if not reference[label]:
            continue
        samples[label] = generate(run, n=n_samples, label=label, seed=seed, guidance=guidance)
        comp = standard_composition(condition_composition(comps, label))
        baseline = random_peptides(n_samples, comp, length_probs(run, label, None, MIN_LEN, MAX_LEN), seed)
        kmer_reference = [reference[label][i] for i in heldout_subset(len(reference[label]), max_rows)]
        training = [s for s, x in zip(train_rows.sequences, train_rows.labels.tolist()) if x == label] \
            if train_rows else []
        training = training_sets[label] = [training[i] for i in rng.permutation(len(training))[:n_samples]]
        report["samples"][str(label)] = {
            "model": sample_metrics(samples[label], reference[label], train_set),
            "random_baseline": sample_metrics(baseline, reference[label], train_set),
            "composition_vs_baseline": composition_gap(samples[label], baseline, reference[label], seed=seed),
            "kmer_order": {"model": kmer_order(samples[label], kmer_reference),
                           "random_baseline": kmer_order(baseline, kmer_reference),
                           "training": kmer_order(training, kmer_reference)},
            "composition": composition(samples[label]).tolist(),
            "reference_composition": composition(reference[label]).tolist(), "baseline_composition": comp.tolist(),
            "lengths": length_distribution(samples[label]).tolist(),
            "reference_lengths": length_distribution(reference[label]).tolist()}
    if 0 in samples and 1 in samples:
        js = lambda a, b: js_divergence(composition(a) + 1e-12, composition(b) + 1e-12)
        report["conditioning"]["label_js_composition"] = {"samples": js(samples[1], samples[0]),
                                                          "heldout_data": js(reference[1], reference[0])}
        data = training_sets if all(len(training_sets[l]) > 1 for l in (0, 1)) else reference
        report["conditioning"]["property_gaps"] = {**property_gaps(samples, data),
                                                   "data": "training" if data is training_sets else "held-out"}
    on_target = TargetSamples(run, n_per_target, seed, guidance)
    report["conditioning"]["motifs"] = motif_report(run, samples.get(0), train_rows, comps, n_samples, on_target,
                                                    seed, guidance, motifs)
    report["conditioning"]["nearest"] = nearness_report(val, train_rows, on_target, seed)
    report["conditioning"]["generation"] = generation_report(run, val, train_rows, on_target, comps, seed)
    return report


class TargetSamples(dict):
    """Each target's samples (label 1, the target, n_per_target of them), made when first asked for: the
    motif, nearness and generation reports share them. guidance and rank None: the run's own (run_guidance,
    run_ranking)."""

    def __init__(self, run: Run, n_per_target: int, seed: int, guidance: float | None, rank: int | None = None):
        super().__init__()
        self.run, self.n, self.seed, self.guidance, self.rank = run, n_per_target, seed, guidance, rank

    def __missing__(self, target: str) -> list:
        self[target] = generate(self.run, n=self.n, label=1, target=target, seed=self.seed, guidance=self.guidance,
                                rank=self.rank)
        return self[target]


def pooled_sample(sets: dict, keys: list, n: int, rng) -> list:
    """n peptides drawn without replacement from the lists sets[k], k in keys, pooled."""
    pool = [s for k in keys for s in sets[k]]
    return [pool[i] for i in rng.permutation(len(pool))[:n]]


def nearness_report(val: Rows, train_rows: Rows | None, on_target: TargetSamples, seed: int = 0,
                    min_peptides: int = 3, max_targets: int = 20) -> dict:
    """Per target with at least min_peptides held-out peptides (the max_targets with most): how far its samples
    are from what it was trained on (each sample's best alignment identity to the target's training
    peptides; novel: under NOVEL_IDENTITY), and whether they sit nearer the target's held-out peptides than
    other targets' samples do (each sample's best BLOSUM62 local-alignment score to those peptides, the
    target's samples minus as many of the other targets' samples, with its SE), beside the same gap for the
    training peptides ('data': the target's against the other targets'), what a model that learned each
    target's peptides would approach."""
    held, trained = {}, {}
    for rows, into in ((val, held), (train_rows, trained)):
        for label, target, seq in zip(rows.labels.tolist(), rows.targets, rows.sequences) if rows else ():
            if label == 1:
                into.setdefault(target, []).append(seq)
    eligible = sorted((t for t, seqs in held.items() if len(seqs) >= min_peptides and t in trained
                       and t in on_target.run.vocab.targets), key=lambda t: (-len(held[t]), t))[:max_targets]
    if len(eligible) < 2:
        return {}
    rng, out = np.random.default_rng(seed), {}
    for target in eligible:
        samples, training = on_target[target], trained[target]
        identities = best_identity(samples, training)
        near = lambda peptides: nearest_neighbour_scores(peptides, held[target])
        rest = [t for t in eligible if t != target]
        gap = mean_gap(near(samples), near(pooled_sample(on_target, rest, len(samples), rng)))
        data_gap = mean_gap(near(training), near(pooled_sample(trained, rest, len(training), rng)))
        out[target] = {"n": len(samples), "held_out": len(held[target]), "median_identity": float(np.median(identities)),
                       "novel": float((identities < NOVEL_IDENTITY).mean()), "copies": float((identities == 1).mean()),
                       "nearer": gap[0], "nearer_se": gap[1], "data_nearer": data_gap[0], "data_nearer_se": data_gap[1]}
    return out

def identity_between(peptides: list) -> float | None:
    """The mean over peptides of each one's best local-alignment identity to the others of the set (1 for a
    repeat): how alike a generator's peptides for one target are. None below two peptides."""
    if len(peptides) < 2:
        return None
    _, ids = local_alignment_scores(peptides, peptides, with_identities=True)
    np.fill_diagonal(ids, -1)
    return float(np.mean(ids.max(1) / np.array([len(p) for p in peptides])))


SPECIFICITY_KEEP = 60           # novel peptides per target a generator is judged by (matched novelty)

def specificity_report(made_by: dict, held: dict, trained: dict, keep: int = SPECIFICITY_KEEP) -> dict:
    """Generators judged beside each other at matched novelty. made_by: a generator's name -> target -> the
    peptides it made for the target; of these the first `keep` novel ones (novel_peptides: under NOVEL_IDENTITY
    to every training peptide of the target, `trained`) are compared by specificity (the chance that a
    peptide made for a target aligns better to its held-out binders, `held`, than one made for another
    target). Per generator: the mean specificity over targets ± SE, the fraction of what it made that is novel
    and unique, and the identity between its kept peptides; then the first generator minus each other one,
    paired by target, ± SE."""
    out = {"keep": keep, "generators": {}, "difference": {}}
    for name, made in made_by.items():
        kept, novel = {}, []
        for target, peptides in made.items():
            kept[target], fraction = novel_peptides(peptides, trained.get(target, []), keep)
            novel.append(fraction)
        per_target = specificity(kept, held)
        values = np.array(list(per_target.values()))
        between = [x for k in kept.values() if (x := identity_between(k)) is not None]
        out["generators"][name] = {
            "specificity": float(values.mean()) if len(values) else None,
            "se": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None,
            "novel": float(np.mean(novel)), "unique": float(np.mean([len(set(p)) / len(p) for p in made.values()])),
            "kept": float(np.mean([len(k) for k in kept.values()])),
            "identity_between": float(np.mean(between)) if between else None,
            "per_target": per_target}
    first, *others = made_by
    for name in others:
        a, b = out["generators"][first]["per_target"], out["generators"][name]["per_target"]
        paired = np.array([a[t] - b[t] for t in a if t in b])
        se = float(paired.std(ddof=1) / math.sqrt(len(paired))) if len(paired) > 1 else None
        out["difference"][name] = {"value": float(paired.mean()) if len(paired) else None, "se": se}
    out["targets"] = len(out["generators"][first]["per_target"])
    return out


SPECIFICITY_TARGETS = 40        # held-out targets the generation report judges at most (those with most binders)

def generation_baselines(run: Run, trained: dict, targets: list, comps: dict, n: int, seed: int) -> dict:
    """What a model's peptides for a target must beat, n per target: the target's known binders mutated by hand
    (mutated_binders, BLOSUM62-weighted substitutions until novel), and residues drawn from the target's
    training composition with its lengths."""
    rng = np.random.default_rng(seed)
    substitutions = substitution_probs(condition_composition(comps, 0))
    composition_of = lambda t: standard_composition(condition_composition(comps, 1, t))
    lengths_of = lambda t: length_probs(run, 1, t, MIN_LEN, MAX_LEN, trained[t])
    return {"mutated binders": {t: mutated_binders(trained[t], n, substitutions, rng) for t in targets},
            "composition": {t: random_peptides(n, composition_of(t), lengths_of(t), seed + k)
                            for k, t in enumerate(targets)}}

def generation_report(run: Run, val: Rows, train_rows: Rows | None, on_target: TargetSamples, comps: dict, seed: int,
                      max_targets: int = SPECIFICITY_TARGETS) -> dict:
    """The model's peptides for each held-out target (on_target) beside mutated known binders and composition
    sampling, at matched novelty (specificity_report), over the targets with held-out and training binders
    (the max_targets with most held-out ones). {} with fewer than two such targets."""
    held, trained = binders_by_target(val), binders_by_target(train_rows)
    targets = sorted((t for t in held if t in trained and t in run.vocab.targets),
                     key=lambda t: (-len(held[t]), t))[:max_targets]
    if len(targets) < 2:
        return {}
    made = {"model": {t: on_target[t] for t in targets},
            **generation_baselines(run, trained, targets, comps, on_target.n, seed)}
    rank, pool = run_ranking(run, on_target.rank)
    if rank > 1:                            # what ranking adds: the same sampler's peptides, unranked
        plain = TargetSamples(run, on_target.n, seed, on_target.guidance, rank=1)
        made["model unranked"] = {t: plain[t] for t in targets}
    return {**specificity_report(made, held, trained), "rank": rank, "pool": pool}


def motif_report(run: Run, background, train_rows: Rows | None, comps: dict, n_samples: int,
                 on_target: TargetSamples, seed: int, guidance: float | None, motifs=None) -> dict:
    """Per motif target: the motif's rate in the target's samples, in a random baseline matched to the
    target (its training composition and lengths: what composition alone buys), in background samples;
    enrichment over background; order enrichment (motif_order); specificity, the motif's rate in its
    own target's samples over its rate in the other motif targets' samples; and the order enrichment
    and specificity of the target's training peptides. The demo's motifs for demo runs, else `motifs`."""
    motifs = load_motifs(motifs) if motifs else (load_motifs() if not run.cfg.data else {})
    motifs = {t: p for t, p in motifs.items() if t in run.vocab.targets}
    if not motifs:
        return {}
    if background is None:
        background = generate(run, n=n_samples, label=0, seed=seed, guidance=guidance)
    on_target = {t: on_target[t] for t in motifs}
    training = {t: [s for s, x in zip(train_rows.sequences, train_rows.targets) if x == t] if train_rows else []
                for t in motifs}
    others = lambda sets, target: [s for t, seqs in sets.items() if t != target for s in seqs]
    out = {}
    for target, pattern in motifs.items():
        samples = on_target[target]
        matched = random_peptides(len(samples), standard_composition(condition_composition(comps, 1, target)),
                                  length_probs(run, 1, target, MIN_LEN, MAX_LEN), seed)
        hits, bg_hits = motif_hits(pattern, samples).sum(), motif_hits(pattern, background).sum()
        enrichment = rate_ratio(hits, len(samples), bg_hits, len(background))
        order = motif_order(pattern, samples, seed=seed)
        rest = others(on_target, target)
        specificity = (rate_ratio(hits, len(samples), motif_hits(pattern, rest).sum(), len(rest)) if rest
                       else (None, None))
        data, data_specificity = None, (None, None)
        if training[target]:
            data = motif_order(pattern, training[target], seed=seed)
            rest = others(training, target)
            if rest:
                data_specificity = rate_ratio(motif_hits(pattern, training[target]).sum(), len(training[target]),
                                              motif_hits(pattern, rest).sum(), len(rest))
        metrics = sample_metrics(samples, samples, set(train_rows.sequences) if train_rows else set())
        out[target] = {"pattern": pattern.pattern, "n": len(samples), "target_rate": order["rate"],
                       "baseline_rate": float(motif_hits(pattern, matched).mean()),
                       "background_rate": bg_hits / max(len(background), 1),
                       "enrichment": enrichment[0], "enrichment_se": enrichment[1],
                       "shuffled_rate": order["shuffled_rate"], "order_enrichment": order["order_enrichment"],
                       "order_enrichment_se": order["order_enrichment_se"], "order_gain": order["order_gain"],
                       "order_gain_se": order["order_gain_se"],
                       "specificity": specificity[0], "specificity_se": specificity[1],
                       "uniqueness": metrics["uniqueness"], "novelty": metrics["novelty"],
                       "training_rate": data["rate"] if data else None,
                       "training_shuffled_rate": data["shuffled_rate"] if data else None,
                       "training_order_enrichment": data["order_enrichment"] if data else None,
                       "training_order_enrichment_se": data["order_enrichment_se"] if data else None,
                       "training_specificity": data_specificity[0], "training_specificity_se": data_specificity[1]}
    return out

SCORE_SHUFFLES = 5              # shuffles of each held-out peptide, a set of negatives that only order tells apart


CLOSE_IDENTITY = 0.5        # a held-out binder this identical to a known binder of its target is "close"


def score_auroc_report(run: Run, val: Rows, train_rows: Rows | None, seed: int = 0, max_rows: int | None = 200,
                       draws: int = DEFAULT_SCORE_DRAWS, min_positives: int = 3, max_targets: int | None = 20,
                       shuffles: int = SCORE_SHUFFLES, new_targets: bool = False) -> dict:
    """Is score() worth anything? Per target with at least min_positives held-out label-1 rows (the
    max_targets with most; None: all): the AUROC of score(target) for its held-out peptides against held-out
    background peptides, against other targets' held-out peptides, and against the peptides themselves
    with their residues shuffled (`shuffles` each; against other targets also split into the peptides at least
    CLOSE_IDENTITY identical to a training peptide of the target and the new ones), beside two baselines on the
    same rows: composition
    (log-odds of the target's training composition vs background's) and nearest neighbour (the best
    BLOSUM62 local alignment to the target's training peptides, what a biologist would try first), and
    the two parts of the model's score (TargetScorers). Then each set's AUROCs averaged over the targets,
    weighted by their positives ("weighted"), with paired bootstrap intervals. At most max_rows rows per
    set (None: all), drawn with the seed. new_targets: the targets are receptors the run never saw, and the
    training rows of each are its known binders, which the model reads (a run trained with references)."""
    if train_rows is None:
        return {"note": "no training rows to build the composition and nearest-neighbour scorers from"}
    rng, shuffle_rng = np.random.default_rng(seed), np.random.default_rng([seed, shuffles])
    pick = lambda seqs: [seqs[i] for i in sorted(rng.permutation(len(seqs))[:max_rows])]
    held_out = binders_by_target(val)
    background = pick([s for s, label in zip(val.sequences, val.labels.tolist()) if label == 0])
    train_by_target = {**binders_by_target(train_rows),
                       "": [s for s, label in zip(train_rows.sequences, train_rows.labels.tolist()) if label == 0]}
    eligible = sorted((t for t, seqs in held_out.items() if len(seqs) >= min_positives and t in train_by_target
                       and (new_targets or t in run.vocab.targets)), key=lambda t: (-len(held_out[t]), t))[:max_targets]
    report = {"targets": {}, "weighted": {}, "skipped_targets": len(held_out) - len(eligible),
              "min_positives": min_positives, "max_targets": max_targets, "max_rows": max_rows, "draws": draws,
              "shuffles": shuffles, "score_mix": run_score_mix(run)}
    if not background or not eligible:
        return report
    scorers, parts = TargetScorers(run, train_by_target, draws, seed, new_targets), {}
    for target in eligible:
        positives = pick(held_out[target])
        known = set(held_out[target]) | set(train_by_target[target])      # a peptide may bind several targets
        others = pick([s for t, seqs in held_out.items() if t != target for s in seqs if s not in known])
        shuffled = [s for s in shuffle_residues(positives * shuffles, shuffle_rng) if s not in known]
        report["targets"][target] = {}
        close = best_identity(positives, train_by_target[target]) >= CLOSE_IDENTITY
        for name, negatives in (("background", background), ("other_targets", others), ("shuffles", shuffled)):
            if not negatives:
                continue
            scores, n_pos = scorers(target, positives + negatives), len(positives)
            subsets = [(name, np.ones(n_pos, dtype=bool))]
            if name == "other_targets":         # close to a known binder (a lookup's ground) or genuinely new
                subsets += [("other_targets, close", close), ("other_targets, new", ~close)]
            for subset, keep in subsets:
                if keep.any():
                    kept = {k: np.concatenate([v[:n_pos][keep], v[n_pos:]]) for k, v in scores.items()}
                    auroc, boot, n_neg = auroc_bootstrap(kept, int(keep.sum()), seed=seed)
                    report["targets"][target][subset] = auroc_summary(auroc, boot, int(keep.sum()), n_neg)
                    parts.setdefault(subset, []).append((int(keep.sum()), n_neg, auroc, boot))
    report["weighted"] = {name: weighted_auroc(p) for name, p in parts.items()}
    return report


class TargetScorers:
    """The scorers of score_auroc_report for one target's rows: the model's score (score(), with the run's mix),
    composition log-odds, the nearest training peptide's alignment score, and the two parts of the model's
    score apart: the background ratio and the target ratio (mixed_score). The bounds under background and
    under any target do not depend on the target: each peptide's are computed once. A run trained with
    references reads the target's training binders; with new_targets, the targets are receptors it never saw,
    known to it only by those binders (score's `binders`)."""

    def __init__(self, run: Run, train_by_target: dict, draws: int, seed: int, new_targets: bool = False):
        self.run, self.train_by_target, self.draws, self.seed = run, train_by_target, draws, seed
        self.new_targets = new_targets
        self.shared_bits = {}           # peptide -> (bits under background, bits under any target)

    def __call__(self, target: str, rows: list) -> dict:
        run, training = self.run, self.train_by_target[target]
        fresh = sorted(set(rows) - set(self.shared_bits))
        if fresh:
            bits = lambda label: condition_bits(run, fresh, label, UNKNOWN_TARGET, self.draws, self.seed)
            self.shared_bits.update(zip(fresh, zip(bits(0), bits(1))))
        background, any_target = np.array([self.shared_bits[s] for s in rows]).T
        target_id = UNKNOWN_TARGET if self.new_targets else run.vocab.target_id(target)
        refs = (score_references(run, None, training, self.seed) if self.new_targets else
                score_references(run, target, None, self.seed))
        cond = condition_bits(run, rows, 1, target_id, self.draws, self.seed, refs=refs)
        log_odds = composition_log_odds(training, self.train_by_target.get("", []), run.vocab.letters)
        return {"model": mixed_score(background, any_target, cond, run_score_mix(run)),
                "composition": np.array([sum(log_odds[c] for c in s) for s in rows]),
                "nearest": nearest_neighbour_scores(rows, training),
                "background ratio": background - cond, "target ratio": any_target - cond}


def evaluate(run_dir, data=None, n_samples: int = 1000, n_per_target: int = 200, seed: int = 0,
             guidance: float | None = None, motifs=None, max_rows: int = 5000,
             n_draws: int = DEFAULT_NOISE_DRAWS, checkpoint: str = "best", device: str = "auto") -> dict:
    """Held-out likelihood, sample quality, order and conditioning, each beside a baseline matched to
    its condition and with its standard error, at `guidance` (None: the run's own, run_guidance). Writes
    evaluation.json in the run directory and returns the report (see format_report)."""
    if n_draws < 1:
        raise DataError(f"noise draws (n_draws, --noise-draws) must be at least 1, not {n_draws}")
    run = load_run(run_dir, checkpoint=checkpoint, device=device)
    val, train_rows = evaluation_split(run, data)
    tuned = guidance is None
    report = {"run_dir": str(run_dir), "checkpoint": checkpoint, "tuned_guidance": tuned,
              "guidance": run_guidance(run, guidance), "label_guidance": run_guidance(run, guidance, target=None),
              "seed": seed, "heldout_rows": len(val.sequences),
              "likelihood": likelihood_report(run, val, train_rows, seed, max_rows, n_draws),
              **sampling_report(run, val, train_rows, n_samples, n_per_target, seed, guidance, motifs, max_rows)}
    report["score_auroc"] = score_auroc_report(run, val, train_rows, seed)
    write_json(Path(run_dir) / "evaluation.json", report)
    return report

def guidance_sweep(run_dir, guidances, data=None, n_samples: int = 1000, n_per_target: int = 200, seed: int = 0,
                   motifs=None, checkpoint: str = "best", device: str = "auto") -> list:
    """sampling_report at each guidance value (same seed, so only the guidance differs). Writes
    guidance_sweep.json in the run directory and returns the reports (see format_guidance_sweep)."""
    run = load_run(run_dir, checkpoint=checkpoint, device=device)
    val, train_rows = evaluation_split(run, data)
    own = run.tuning.get("guidance")                    # the run's own guidance, marked in the table
    reports = [{"guidance": g, "tuned_guidance": g == own,
                **sampling_report(run, val, train_rows, n_samples, n_per_target, seed, g, motifs)} for g in guidances]
    write_json(Path(run_dir) / "guidance_sweep.json", reports)
    return reports

# =============================================================================================
# Metrics: the headline figures, each read from a report in one place
# =============================================================================================


MOTIF_MEDIANS = ("target_rate", "baseline_rate", "background_rate", "enrichment", "order_enrichment",
                 "training_order_enrichment", "uniqueness", "novelty")

def motif_summary(motifs: dict) -> dict:
    """A sampling report's motif conditioning (conditioning["motifs"]) over its targets: the median of each
    MOTIF_MEDIANS figure (None where no target has it), and how many targets have their motif enriched over
    background more than 2x and 5x, and written in order (rate above the shuffled rate by more than 2 SE)."""
    out = {"targets": len(motifs)}
    for key in MOTIF_MEDIANS:
        values = [t[key] for t in motifs.values() if t[key] is not None]
        out[key] = float(np.median(values)) if values else None
    for fold in (2, 5):
        out[f"enriched_{fold}x"] = sum((t["enrichment"] or 0) > fold for t in motifs.values())
    out["in_order"] = sum(verdict(-t["order_gain"], t["order_gain_se"], "yes", "no") == "yes" for t in motifs.values())
    return out

def plus_minus(value, se, digits: int = 3, signed: bool = False) -> str:
    """'value ± se', '-' for a missing value."""
    if value is None:
        return "-"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if se is not None else "")


def number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Metric:
    """A headline figure: its name (a table's column) and how to read it, as text, from a report: an
    evaluation report, or one guidance value's sampling report. `in_sweep`: False for the figures a guidance
    sweep does not recompute, since guidance changes samples only (the likelihood, the score's AUROC)."""
    name: str
    read: Callable[[dict], str]
    in_sweep: bool = True


def _label1_likelihood(report: dict) -> dict | None:
    return report.get("likelihood", {}).get("labels", {}).get("1")


def _label1_samples(report: dict, key: str) -> dict | None:
    return report["samples"].get("1", {}).get(key)


def _motifs(report: dict, read) -> str:
    """A figure of the motif targets' summary (motif_summary), '-' when the run has no motif targets."""
    motifs = report["conditioning"].get("motifs")
    return read(motif_summary(motifs)) if motifs else "-"


def _targets_using_order(report: dict) -> str:
    targets = report.get("likelihood", {}).get("targets", {}).values()
    used = sum(verdict(-t["order_bits"]["difference"], t["order_bits"]["se"], "yes", "no") == "yes" for t in targets)
    return f"{used}/{len(targets)}" if targets else "-"


def _nearness(report: dict, read) -> str:
    """A figure over the targets of the nearness report, '-' when it has none."""
    nearest = report["conditioning"].get("nearest")
    return read(list(nearest.values())) if nearest else "-"


def _generation(report: dict, read) -> str:
    """A figure of the generation report (model beside mutated binders and composition), '-' without one."""
    generation = report["conditioning"].get("generation")
    return read(generation) if generation else "-"


def _specificity(name: str):
    figure = lambda g: plus_minus(g["generators"][name]["specificity"], g["generators"][name]["se"])
    return lambda r: _generation(r, figure)


def _weighted_auroc(report: dict, negatives: str, scorer: str) -> str:
    r = report.get("score_auroc", {}).get("weighted", {}).get(negatives)
    return number(r[scorer]["auroc"], 3) if r else "-"


def _gap_ratio(report: dict, name: str) -> str:
    return number(report["conditioning"].get("property_gaps", {}).get(name, {}).get("ratio"))


def _sample_figure(key: str, digits: int = 3):
    return lambda r: number((_label1_samples(r, "model") or {}).get(key), digits)


def _kmer_gain(report: dict) -> str:
    k = (_label1_samples(report, "kmer_order") or {}).get("model")
    return plus_minus(k["gain"] * 1e3, k["gain_se"] * 1e3, 2, signed=True) if k else "-"


METRICS = [
    Metric("label-1 bound, bits/res", lambda r: plus_minus(_label1_likelihood(r)["bits_per_residue"],
                                                           _label1_likelihood(r)["bits_per_residue_se"])
           if _label1_likelihood(r) else "-", in_sweep=False),
    Metric("order bits, label 1", lambda r: plus_minus(_label1_likelihood(r)["order_bits"]["difference"],
                                                       _label1_likelihood(r)["order_bits"]["se"], signed=True)
           if _label1_likelihood(r) else "-", in_sweep=False),
    Metric("targets whose order bits > 2 SE", _targets_using_order, in_sweep=False),
    Metric("label-1 valid", _sample_figure("validity")),
    Metric("unique", _sample_figure("uniqueness")),
    Metric("novel", _sample_figure("novelty")),
    Metric("JS comp", _sample_figure("js_composition")),
    Metric("baseline JS comp", lambda r: number((_label1_samples(r, "random_baseline") or {}).get("js_composition"), 3)),
    Metric("k-mer order gain x1e3", _kmer_gain),
    Metric("motif rate on target", lambda r: _motifs(r, lambda t: number(t["target_rate"]))),
    Metric("matched baseline", lambda r: _motifs(r, lambda t: number(t["baseline_rate"]))),
    Metric("in background", lambda r: _motifs(r, lambda t: number(t["background_rate"]))),
    Metric("median enrichment", lambda r: _motifs(r, lambda t: number(t["enrichment"], 1))),
    Metric("targets enriched >2x", lambda r: _motifs(r, lambda t: f"{t['enriched_2x']}/{t['targets']}")),
    Metric("targets enriched >5x", lambda r: _motifs(r, lambda t: f"{t['enriched_5x']}/{t['targets']}")),
    Metric("order enrichment", lambda r: _motifs(r, lambda t: number(t["order_enrichment"]))),
    Metric("data's order enrichment", lambda r: _motifs(r, lambda t: number(t["training_order_enrichment"]))),
    Metric("targets in order (rate > shuffled by 2 SE)", lambda r: _motifs(r, lambda t: f"{t['in_order']}/{t['targets']}")),
    Metric("target samples unique", lambda r: _motifs(r, lambda t: number(t["uniqueness"], 3))),
    Metric("target samples novel", lambda r: _motifs(r, lambda t: number(t["novelty"], 3))),
    Metric("targets whose samples are nearer their held-out peptides (2 SE)", lambda r: _nearness(
        r, lambda ts: f"{sum(verdict(-t['nearer'], t['nearer_se'], 'y', 'n') == 'y' for t in ts)}/{len(ts)}")),
    Metric(f"target samples under {NOVEL_IDENTITY:.0%} identity to its training peptides (median)",
           lambda r: _nearness(r, lambda ts: number(float(np.median([t["novel"] for t in ts]))))),
    Metric("target specificity, matched novelty: model", _specificity("model")),
    Metric("mutated known binders", _specificity("mutated binders")),
    Metric("composition sampling", _specificity("composition")),
    Metric("model - mutated binders", lambda r: _generation(r, lambda g: plus_minus(
        g["difference"]["mutated binders"]["value"], g["difference"]["mutated binders"]["se"], signed=True))),
    Metric("target samples novel, unique", lambda r: _generation(
        r, lambda g: f"{g['generators']['model']['novel']:.2f}, {g['generators']['model']['unique']:.2f}")),
    *(Metric(f"score AUROC vs {negatives.replace('_', ' ')}: {scorer} (weighted)",
             lambda r, n=negatives, k=scorer: _weighted_auroc(r, n, k), in_sweep=False)
      for negatives in ("background", "other_targets", "shuffles") for scorer in ("model", "composition", "nearest")),
    *(Metric(f"score AUROC vs other targets: {part} alone (weighted)",
             lambda r, k=part: _weighted_auroc(r, "other_targets", k), in_sweep=False)
      for part in ("background ratio", "target ratio")),
    Metric("charge gap / data's", lambda r: _gap_ratio(r, "net charge")),
    Metric("hydropathy gap / data's", lambda r: _gap_ratio(r, "hydropathy")),
]


def metrics_table(first: tuple, rows: list, sweep: bool = False) -> str:
    """A Markdown table of METRICS, one row per report: `first` names the leading columns and each row is
    (its leading cells, its report). A guidance sweep (`sweep`) shows only the metrics it recomputes."""
    metrics = [m for m in METRICS if m.in_sweep or not sweep]
    out = ["| " + " | ".join([*first, *(m.name for m in metrics)]) + " |", "|---" * (len(first) + len(metrics)) + "|"]
    out += ["| " + " | ".join([*cells, *(m.read(report) for m in metrics)]) + " |" for cells, report in rows]
    return "\n".join(out)


def format_summary(report: dict) -> str:
    width = max(len(m.name) for m in METRICS)
    return "\n".join(["Summary (the figures of the guidance sweep and the ablation table; medians over motif targets):"]
                     + [f"  {m.name:<{width}}  {m.read(report)}" for m in METRICS])


# =============================================================================================
# Text and plots
# =============================================================================================


def format_guidance_sweep(reports: list) -> str:
    """One row per guidance value of guidance_sweep's reports: the METRICS that guidance can change."""
    name = lambda r: f"{r['guidance']:g}" + (" (the run's)" if r.get("tuned_guidance") else "")
    return metrics_table(("guidance",), [((name(r),), r) for r in reports], sweep=True)


def format_score_auroc(report: dict) -> str:
    """score_auroc_report as readable text: one row per target and set of negatives, then the weighted means."""
    out = ["Score ranking: AUROC of a target's score, its held-out peptides against others (0.5: chance; [95% "
           "bootstrap interval]), beside", "a composition-only scorer (log-odds of the target's training "
           "composition vs background's) and a nearest-neighbour one (best BLOSUM62", "local alignment to the "
           f"target's training peptides) on the same rows; 'shuffles': each held-out peptide shuffled "
           f"{report.get('shuffles', SCORE_SHUFFLES)} times:"]
    if not report.get("targets"):
        return "\n".join(out + [f"  nothing to score: {report.get('note', 'no target with enough held-out rows')}"])
    out.append(f"  {'target':16}{'against':15}{'pos':>5}{'neg':>6}  {'model':21}{'composition':21}{'nearest':21}"
               f"{'model - composition':43}model - nearest")
    rows = [(t, name, r) for t, sets in report["targets"].items() for name, r in sets.items()]
    rows += [("WEIGHTED", name, r) for name, r in report.get("weighted", {}).items()]
    for target, name, r in rows:
        cells = [f"{r[k]['auroc']:.3f} [{r[k]['interval'][0]:.2f}, {r[k]['interval'][1]:.2f}]" for k in
                 ("model", "composition", "nearest")]
        out.append(f"  {target:16}{name.replace('_', ' '):15}{r['positives']:5}{r['negatives']:6}  "
                   + "".join(f"{c:21}" for c in cells)
                   + "".join(f"{auroc_difference(r['difference'][k]):43}" for k in ("composition", "nearest")).rstrip())
    if report.get("weighted") and "target ratio" in next(iter(report["weighted"].values())):
        mix = report.get("score_mix", 1.0)
        out.append(f"  the model's score is {mix:g} x its background ratio (bits under background - under the target)"
                   f" + {1 - mix:g} x its target ratio (bits under any target - under the target); each part alone, "
                   f"WEIGHTED:")
        for name, r in report["weighted"].items():
            cells = [f"{k} {r[k]['auroc']:.3f} [{r[k]['interval'][0]:.2f}, {r[k]['interval'][1]:.2f}]"
                     for k in ("background ratio", "target ratio")]
            out.append(f"  {'':16}{name.replace('_', ' '):15}{'':11}  " + "   ".join(cells))
    if report["skipped_targets"]:
        out.append(f"  ({report['skipped_targets']} more target(s) with held-out rows not shown: fewer than "
                   f"{report['min_positives']} held-out peptides, no training rows, or past the first "
                   f"{report['max_targets']}; WEIGHTED: the mean over the targets above, weighted by positives)")
    return "\n".join(out)


def auroc_difference(d: dict) -> str:
    """'+0.012 [-0.03, +0.05] model better' from auroc_summary's difference."""
    call = ("model better" if d["interval"][0] > 0 else "model worse" if d["interval"][1] < 0 else
            "no difference shown")
    return f"{d['value']:+.3f} [{d['interval'][0]:+.2f}, {d['interval'][1]:+.2f}] {call}"


def format_report(report: dict) -> str:
    """The evaluation report as readable text: every verdict a difference or ratio with its standard
    error (±), "not distinguishable" within 2 SE."""
    own = (f" for targets (the run's own, tuned on its validation binders), {report['label_guidance']:g} for labels"
           if report.get("tuned_guidance") else "")
    parts = [f"Evaluation of {report['run_dir']} ({report['checkpoint']}.pt, guidance {report['guidance']:g}{own}, "
             f"{report['heldout_rows']} held-out rows)", format_summary(report), format_likelihood(report["likelihood"]),
             format_samples(report), format_kmer_order(report["samples"]), format_conditioning(report["conditioning"])]
    if "score_auroc" in report:
        parts.append(format_score_auroc(report["score_auroc"]))
    return "\n\n".join(p for p in parts if p)


def format_likelihood(lk: dict) -> str:
    out = [f"Held-out likelihood (bits per residue, lower is better; bound averaged over {lk['noise_draws']} noise "
           f"draws per term; ± one standard error over peptides):",
           "  composition: the same peptides under their own condition's training composition "
           f"({'label 0; label 1: its target' if lk['matched_baseline'] else 'POOLED: the training file is gone'}); "
           f"uniform guess {lk['uniform_bits']:.3f}",
           "  order bits: bound on the peptides with their residues shuffled minus on them as they are "
           "(> 0: the model uses residue order)",
           f"  {'':18}{'rows':>6}{'model':>8}{'comp.':>8}  {'model - comp.':<17}{'verdict':<36}"
           f"{'order bits':<17}verdict"]
    groups = [(f"label {l}", v) for l, v in lk["labels"].items()] + [(f"  {t}", v) for t, v in lk["targets"].items()]
    for name, v in groups:
        d, o = v["vs_composition"], v["order_bits"]
        out.append(f"  {name:18}{v['rows']:>6}{v['bits_per_residue']:8.3f}{v['composition_bits']:8.3f}  "
                   f"{plus_minus(d['difference'], d['se'], signed=True):<17}"
                   f"{verdict(d['difference'], d['se'], 'beats composition', 'WORSE than composition'):<36}"
                   f"{plus_minus(o['difference'], o['se'], signed=True):<17}"
                   f"{verdict(-o['difference'], o['se'], 'uses residue order', 'PREFERS shuffled peptides')}")
    if not lk["targets"]:
        out.append(f"  (no target has {MIN_TARGET_ROWS} held-out rows: no per-target figures)")
    return "\n".join(out)


def format_samples(report: dict) -> str:
    out = ["Samples vs held-out peptides (JS divergence in bits: 0 = same distribution; random_baseline: "
           "residues and lengths drawn from the same label's training composition and lengths"
           + ("" if report.get("matched_baseline", True) else ", POOLED: the training file is gone") + "):",
           f"  {'':24}{'validity':>9}{'unique':>9}{'novel':>9}{'JS comp':>9}{'JS len':>9}"]
    for label, s in report["samples"].items():
        for name in ("model", "random_baseline"):
            m = s[name]
            out.append(f"  label {label} {name:16}{m['validity']:9.3f}{m['uniqueness']:9.3f}{m['novelty']:9.3f}"
                       f"{m['js_composition']:9.4f}{m['js_length']:9.4f}")
        c = s["composition_vs_baseline"]
        out.append(f"  label {label} JS comp, model - baseline {plus_minus(c['difference'], c['se'], 4, signed=True)}: "
                   + verdict(c["difference"], c["se"], "samples closer to held-out composition than the baseline",
                             "samples FARTHER from held-out composition than the baseline"))
    return "\n".join(out)


def format_kmer_order(samples: dict) -> str:
    out = [f"K-mer order (frequencies of residue pairs {'/'.join(map(str, PAIR_GAPS))} apart; squared distance "
           f"to held-out peptides x1e3, unbiased: 0 = same; shuffled: each peptide's residues in random order; "
           f"gain = shuffled - as is, > 0: order brings the peptides closer; a set without order gains 0):",
           f"  {'':24}{'distance':>10}{'shuffled':>10}  gain"]
    for label, s in samples.items():
        for name, k in s["kmer_order"].items():
            if k is not None:
                out.append(f"  label {label} {name:16}{k['distance'] * 1e3:10.3f}{k['shuffled_distance'] * 1e3:10.3f}  "
                           f"{plus_minus(k['gain'] * 1e3, k['gain_se'] * 1e3, signed=True):<17}"
                           + verdict(-k["gain"], k["gain_se"], "order brings them closer", "order takes them farther"))
    return "\n".join(out)


def format_conditioning(cond: dict) -> str:
    out = []
    if "label_js_composition" in cond:
        c = cond["label_js_composition"]
        out.append(f"Label conditioning: JS(label-1 vs label-0 composition) samples {c['samples']:.4f}, "
                   f"held-out data {c['heldout_data']:.4f}")
    if "property_gaps" in cond:
        gaps = cond["property_gaps"]
        out.append(f"  label-1 minus label-0 mean, samples beside the {gaps['data']} peptides (excess > 0: the "
                   f"samples exaggerate the data's gap, a caricature of the condition):")
        for name in PROPERTY_SCALES:
            g = gaps[name]
            out.append(f"  {name:12} samples {plus_minus(g['samples_gap'], g['samples_gap_se'], signed=True):<17}"
                       f"data {plus_minus(g['data_gap'], g['data_gap_se'], signed=True):<17}"
                       f"ratio {plus_minus(g['ratio'], g['ratio_se'], 2):<13}"
                       f"excess {plus_minus(g['excess'], g['excess_se'], signed=True):<17}"
                       + verdict(g["excess"], g["excess_se"], "samples understate the data's gap",
                                 "samples EXAGGERATE the data's gap"))
    if cond.get("motifs"):
        out += ["", format_motifs(cond["motifs"])]
    if cond.get("nearest"):
        out += ["", format_nearness(cond["nearest"])]
    if cond.get("generation"):
        out += ["", format_generation(cond["generation"])]
    return "\n".join(out)


def format_generation(generation: dict) -> str:
    """generation_report as text: each generator's specificity at matched novelty, and the model's verdicts."""
    out = [f"Peptides for a target beside what a biologist would make by hand, at matched novelty "
           f"({generation['targets']} held-out targets; per target the first {generation['keep']} peptides under "
           f"{NOVEL_IDENTITY:.0%} identity to its training binders): specificity = the chance that a peptide made for "
           f"a target aligns better (BLOSUM62) to its held-out binders than one made for another target (0.5: "
           f"chance), mean over targets ± SE; "
           f"'model': {ranked(generation.get('rank', 1), generation.get('pool'))}"
           f"'mutated binders': known binders with BLOSUM62-weighted substitutions until novel; 'composition': "
           f"residues drawn from the target's training composition; novel / unique: of all it made; identity "
           f"between: of its kept peptides to each other",
           f"  {'':18}{'specificity':<17}{'novel':>7}{'unique':>8}{'kept':>7}{'identity between':>18}"]
    for name, g in generation["generators"].items():
        out.append(f"  {name:18}{plus_minus(g['specificity'], g['se']):<17}{g['novel']:7.2f}{g['unique']:8.2f}"
                   f"{g['kept']:7.1f}{number(g['identity_between']):>18}")
    for name, d in generation["difference"].items():
        out.append(f"  model - {name}: {plus_minus(d['value'], d['se'], signed=True)}: "
                   + verdict(d["value"], d["se"], f"model LOSES to {name}", f"model beats {name}"))
    return "\n".join(out)


def ranked(rank: int, pool: str | None) -> str:
    """What the model's peptides for a target are, in words: its samples, or the best of `rank` candidates."""
    if rank == 1:
        return "its samples; "
    made = ("half its samples, half the target's known binders mutated by hand until novel" if pool == "mixed" else
            "the target's known binders mutated by hand until novel")
    return f"the best 1 of {rank} candidates ({made}) by its score; 'model unranked': its samples; "


def format_nearness(nearest: dict) -> str:
    out = [f"Target samples beside the target's peptides: identity = each sample's best local-alignment identity to "
           f"the target's training peptides (median; novel: under {NOVEL_IDENTITY:.0%}; copies: found whole in one); "
           f"nearer = mean best BLOSUM62 alignment score to the target's held-out peptides, its samples minus other "
           f"targets' samples (± SE; > 0: conditioning on the target brings samples near its binders), 'data': the "
           f"same for the training peptides",
           f"  {'target':14}{'held-out':>9}{'identity':>9}{'novel':>7}{'copies':>7}  {'nearer':<18}{'data nearer':<18}"
           f"verdict"]
    for target, m in nearest.items():
        out.append(f"  {target:14}{m['held_out']:9}{m['median_identity']:9.2f}{m['novel']:7.2f}{m['copies']:7.2f}  "
                   f"{plus_minus(m['nearer'], m['nearer_se'], 2, signed=True):<18}"
                   f"{plus_minus(m['data_nearer'], m['data_nearer_se'], 2, signed=True):<18}"
                   + verdict(-m["nearer"], m["nearer_se"], "nearer its own held-out peptides",
                             "FARTHER from them than other targets' samples"))
    return "\n".join(out)


def format_motifs(motifs: dict) -> str:
    out = ["Target conditioning: the fraction of peptides carrying the target's motif in the target's samples, "
           "a random baseline with the target's training composition and lengths, and background samples; "
           "enrichment = target / background; order enr. = rate / rate with each peptide's residues shuffled "
           f"({N_SHUFFLES} permutations; about 1 when composition alone makes the motif); specificity = rate "
           "in the target's samples / in the other targets' samples; 'data': the target's training peptides; "
           "± one SE; unique and novel: of the target's samples",
           f"  {'target':14}{'rate':>6}{'matched':>8}{'backgr.':>8}{'enrichment':>17}{'order enr.':>17}"
           f"{'data order enr.':>17}{'specificity':>17}{'data spec.':>17}{'data rate':>10}{'unique':>7}{'novel':>7}"]
    for target, m in motifs.items():
        out.append(f"  {target:14}{m['target_rate']:6.3f}{m['baseline_rate']:8.3f}{m['background_rate']:8.3f}"
                   f"{plus_minus(m['enrichment'], m['enrichment_se'], 1):>17}"
                   f"{plus_minus(m['order_enrichment'], m['order_enrichment_se'], 1):>17}"
                   f"{plus_minus(m['training_order_enrichment'], m['training_order_enrichment_se'], 1):>17}"
                   f"{plus_minus(m['specificity'], m['specificity_se'], 1):>17}"
                   f"{plus_minus(m['training_specificity'], m['training_specificity_se'], 1):>17}"
                   f"{plus_minus(m['training_rate'], None, 2):>10}{m['uniqueness']:7.3f}{m['novelty']:7.3f}")
    return "\n".join(out)


def plot_evaluation(report: dict, out=None):
    """Amino-acid composition (held-out data vs samples vs the random floor) and length distributions,
    one row per label. Saved as evaluation.png in the run directory unless `out` says otherwise."""
    plt = pyplot()
    labels = sorted(report["samples"])
    fig, axes = plt.subplots(len(labels), 2, figsize=(13, 3.4 * len(labels)), squeeze=False)
    x = np.arange(len(RESIDUES))
    for row, label in zip(axes, labels):
        s = report["samples"][label]
        for k, (key, name) in enumerate([("reference_composition", "held-out data"), ("composition", "samples"),
                                         ("baseline_composition", "random baseline (its training composition)")]):
            row[0].bar(x + (k - 1) * 0.27, s[key], width=0.27, label=name)
        row[0].set_xticks(x, list(RESIDUES))
        row[0].set_title(f"label {label}: amino-acid composition")
        row[0].legend(fontsize=7)
        lengths = np.arange(MAX_LEN + 1)
        row[1].bar(lengths - 0.2, s["reference_lengths"], width=0.4, label="held-out data")
        row[1].bar(lengths + 0.2, s["lengths"], width=0.4, label="samples")
        row[1].set_xlim(MIN_LEN - 1, MAX_LEN + 1)
        row[1].set_title(f"label {label}: length distribution")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out or Path(report["run_dir"]) / "evaluation.png", dpi=100)
    return fig


# CMD

# =============================================================================================
# Command line
# =============================================================================================


def cmd_evaluate(args):
    run_dir = run_dir_arg(args)
    common = dict(data=args.data, n_samples=args.n, seed=args.seed, motifs=args.motifs, checkpoint=args.checkpoint,
                  device=args.device)
    if len(args.guidance) > 1:
        print(format_guidance_sweep(guidance_sweep(run_dir, args.guidance, **common)))
        log(f"wrote guidance_sweep.json in {run_dir}")
        return
    report = evaluate(run_dir, guidance=args.guidance[0], n_draws=args.noise_draws, **common)
    plot_evaluation(report)
    print(format_report(report))
    log(f"wrote evaluation.json and evaluation.png in {report['run_dir']}")


def build_parser():
    p = argparse.ArgumentParser(prog="mimir_eval.py", description="held-out likelihood, sample quality and "
                                "conditioning of a trained run, each beside its baseline")
    add_run_args(p)
    p.add_argument("--data", default=None, help="score this file instead of the run's held-out split")
    p.add_argument("-n", type=number_in(int, 1, MAX_EVAL_SAMPLES), default=1000,
                   help="samples per condition (default 1000)")
    p.add_argument("--guidance", type=GUIDANCE, nargs="+", default=[None],
                   help="classifier-free guidance (default: the run's own, tuned on its validation binders); several "
                        "values print a comparison table")
    p.add_argument("--motifs", default=None, help="motifs JSON (target -> regex); default: the demo's, for demo runs")
    p.add_argument("--noise-draws", type=number_in(int, 1, MAX_DRAWS), default=DEFAULT_NOISE_DRAWS,
                   help=f"noise draws averaged per term of the likelihood bound (default {DEFAULT_NOISE_DRAWS}; "
                        f"more: smaller error bars, slower)")
    p.add_argument("--seed", type=SEED, default=0)
    add_model_args(p)
    return p


def main(argv=None):
    run_command(cmd_evaluate, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
