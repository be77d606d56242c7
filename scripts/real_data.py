"""Judge a model on real peptide-receptor pairs, held out within their receptors, beside what a biologist does.

    python scripts/real_data.py [--data data/pepnn/dataset.csv.gz] [--out runs/real] [--name NAME]
                                [--set KEY=VALUE ...] [--samples 100] [--shuffles 3] [--eval-only]
                                [--new-receptors N]

The data file is a Mimir CSV of real pairs plus background windows (by default the shipped PDB pairs,
data/pepnn/; scripts/build_dataset.py with --interactions makes others). Of every target with at least
--min-peptides peptides, a seeded --holdout share of its peptides is held out, and so are --background
background rows; the model trains with the product's defaults (the preset plus --set overrides; it tunes
its guidance and score on its own validation split) on a CSV of the other rows only. Then the
evaluation's own reports judge it on the held-out rows:
- the score (mimir_eval.score_auroc_report, every target, every row): the model's score, its two parts,
  composition log-odds and the nearest training peptide (BLOSUM62 local alignment) rank each target's
  held-out peptides against the held-out background, the other targets' held-out peptides and the
  peptides' own shuffles; AUROCs averaged over targets, weighted by their held-out peptides, with paired
  bootstrap intervals;
- the peptides (--samples per target, at the run's own guidance; mimir_eval.generation_report): their
  specificity to the target's held-out binders at matched novelty beside known binders mutated by hand
  and composition sampling, and (mimir_eval.nearness_report) their nearness to the held-out binders.
With --new-receptors N, N receptors (6-9 peptides each) leave training entirely; half of each one's peptides
are what a user would know of it, and a run trained with references (--set references=4) is judged on
the other half given only those (new_receptor_report): its peptides beside the known binders mutated by
hand and their composition, its score beside a lookup of them and their composition.
The report goes to OUT/NAME/real_data.json.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mimir_core as mc  # noqa: E402
import mimir_eval as ev  # noqa: E402


def held_out_split(rows: mc.Rows, min_peptides: int, holdout: float, n_background: int, seed: int):
    """(training row indices, {target: held-out peptides}, held-out background peptides): per target with
    at least min_peptides distinct peptides, a seeded `holdout` share of them (every row of such a peptide
    under that target leaves training); n_background background rows likewise."""
    rng = np.random.default_rng(seed)
    by_target = {}
    for i, (label, target, seq) in enumerate(zip(rows.labels.tolist(), rows.targets, rows.sequences)):
        if label == 1:
            by_target.setdefault(target, {}).setdefault(seq, []).append(i)
    held, out_rows = {}, set()
    for target in sorted(by_target):
        peptides = sorted(by_target[target])
        if len(peptides) >= min_peptides:
            k = int(round(holdout * len(peptides)))
            held[target] = [peptides[j] for j in sorted(rng.permutation(len(peptides))[:k])]
            out_rows.update(i for p in held[target] for i in by_target[target][p])
    background = np.flatnonzero(rows.labels == 0)
    picked = np.sort(rng.choice(background, size=min(n_background, len(background)), replace=False))
    out_rows.update(picked.tolist())
    train_idx = np.array([i for i in range(len(rows.labels)) if i not in out_rows])
    return train_idx, held, [rows.sequences[i] for i in picked]


def new_receptor_split(rows: mc.Rows, train_idx, held: dict, n: int, peptides: tuple, seed: int):
    """(training row indices without them, {receptor: (its known binders, its binders to judge)}): n receptors
    with peptides[0]..peptides[1] distinct training peptides (none of those in `held`, judged within their
    receptor), chosen with
    the seed, leave training entirely; the first half of each one's peptides (seeded order, rounded down) is
    what a user would know of it, the rest is judged."""
    rng = np.random.default_rng([seed, n])
    by_target = {}
    for i in train_idx.tolist():
        if rows.labels[i] == 1:
            by_target.setdefault(rows.targets[i], {}).setdefault(rows.sequences[i], []).append(i)
    fits = sorted(t for t, seqs in by_target.items() if peptides[0] <= len(seqs) <= peptides[1] and t not in held)
    chosen = sorted(fits[i] for i in rng.permutation(len(fits))[:n])
    new, out_rows = {}, set()
    for target in chosen:
        seqs = [sorted(by_target[target])[j] for j in rng.permutation(len(by_target[target]))]
        new[target] = (seqs[:len(seqs) // 2], seqs[len(seqs) // 2:])
        out_rows.update(i for s in seqs for i in by_target[target][s])
    return np.array([i for i in train_idx.tolist() if i not in out_rows]), new


def new_receptor_report(run: mc.Run, new: dict, train_rows: mc.Rows, background: list, n: int, args) -> dict:
    """Receptors the run never saw, known only by a few binders: the model's peptides for each (reading those
    binders) beside the same binders mutated by hand and their composition, at matched novelty
    (mimir_eval.specificity_report, judged on the receptor's other binders); and the model's score (reading
    them) beside a lookup of them and their composition, ranking each receptor's judged binders against the
    held-out background, the other new receptors' and their own shuffles (mimir_eval.score_auroc_report).
    A run that reads no binders has nothing of a new receptor: its peptides and score are any target's."""
    known = {t: k for t, (k, _) in new.items()}
    judged = {t: j for t, (_, j) in new.items()}
    training_background = [s for s, label in zip(train_rows.sequences, train_rows.labels.tolist()) if label == 0]
    known_rows = heldout_rows(known, training_background)     # read as the new receptors' training rows
    comps = ev.condition_compositions(known_rows, mc.Vocab(run.vocab.letters, sorted(new)))
    rank, pool = (mc.run_ranking(run, None, None, None, next(iter(known.values()))) if run.cfg.references
                  else (1, None))
    make = ((lambda k, rank=None: mc.generate(run, n, binders=k, seed=args.seed, rank=rank)) if run.cfg.references
            else (lambda k, rank=None: mc.generate(run, n, label=1, seed=args.seed)))   # id-only: any target's
    made = {"model": {t: make(k) for t, k in known.items()},
            **ev.generation_baselines(run, known, sorted(new), comps, n, args.seed)}
    if rank > 1:                                                        # what ranking adds
        made["model unranked"] = {t: make(k, rank=1) for t, k in known.items()}
    return {"receptors": len(new), "known binders": sum(map(len, known.values())),
            "judged binders": sum(map(len, judged.values())),
            "generation": {**ev.specificity_report(made, judged, known), "rank": rank, "pool": pool},
            "score": ev.score_auroc_report(run, heldout_rows(judged, background), known_rows, args.seed, max_rows=None,
                                           draws=args.draws, min_positives=1, max_targets=None,
                                           shuffles=args.shuffles, new_targets=True)}


def write_rows(rows: mc.Rows, idx, path: Path):
    """The rows idx as a Mimir CSV, written whole or not at all (two runs started together read it whole)."""
    def write(raw):
        with gzip.open(raw, "wt", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "target", "sequence", "source"])
            for i in idx.tolist():
                w.writerow([int(rows.labels[i]), rows.targets[i], rows.sequences[i],
                            rows.sources[i] if rows.sources is not None else ""])
    mc.atomic_write(path, write)


def heldout_rows(held: dict, background: list) -> mc.Rows:
    """The held-out binders (label 1, under their target) and background peptides as one set of rows, which the
    evaluation's reports read as a run's held-out split."""
    targets = [t for t in held for _ in held[t]]
    return mc.Rows("held-out", np.array([1] * len(targets) + [0] * len(background), dtype=np.int64),
                   targets + [""] * len(background), [s for t in held for s in held[t]] + list(background), None,
                   np.zeros(len(targets) + len(background), dtype=np.int64))


def generation_reports(run: mc.Run, train_rows: mc.Rows, val: mc.Rows, n: int, seed: int) -> dict:
    """The model's peptides for each held-out target (n of them, at the run's own guidance) beside mutated known
    binders and composition sampling at matched novelty (mimir_eval.generation_report), and how near they sit
    to the target's held-out binders (mimir_eval.nearness_report)."""
    on_target = ev.TargetSamples(run, n, seed, None)
    comps = ev.baseline_compositions(run, train_rows)
    targets = len(set(val.targets) - {""})
    near = ev.nearness_report(val, train_rows, on_target, seed, min_peptides=1, max_targets=targets)
    report = {"generation": ev.generation_report(run, val, train_rows, on_target, comps, seed, max_targets=targets)}
    if not near:                                        # no target held out within itself
        return report
    return {**report,
            "nearness": {"targets": len(near), "novel (median)": float(np.median([m["novel"] for m in near.values()])),
                         "nearer by 2 SE": sum(m["nearer"] > 2 * m["nearer_se"] for m in near.values()),
                         "nearer (mean)": float(np.mean([m["nearer"] for m in near.values()])),
                         "data nearer (mean)": float(np.mean([m["data_nearer"] for m in near.values()]))}}


def format_report(name: str, rep: dict) -> str:
    out = [f"{name}: {len(rep['score']['targets'])} targets, {rep['data']}, guidance "
           f"{rep['guidance']:g}, score mix {rep['score']['score_mix']:g}"] + format_score(rep["score"])
    if rep.get("generation"):
        out.append(ev.format_generation(rep["generation"]))
    if rep.get("nearness"):
        s = rep["nearness"]
        out.append(f"  samples: novel (under {mc.NOVEL_IDENTITY:.0%} identity to the target's training peptides, "
                   f"median over targets) {s['novel (median)']:.2f}; nearer their target's held-out peptides than "
                   f"other targets' samples by 2 SE: {s['nearer by 2 SE']}/{s['targets']} targets (mean gap "
                   f"{s['nearer (mean)']:+.2f}; the training peptides' {s['data nearer (mean)']:+.2f})")
    if rep.get("new receptors"):
        new = rep["new receptors"]
        out.append(f"Receptors never trained on ({new['receptors']}), given {new['known binders']} known binders, "
                   f"judged on {new['judged binders']} others:")
        out += format_score(new["score"]) + [ev.format_generation(new["generation"])]
    return "\n".join(out)


def format_score(score: dict) -> list:
    """A line per negative set: the model's AUROC beside composition and the nearest known peptide."""
    out = []
    for negatives, r in score["weighted"].items():
        auroc = lambda k: f"{r[k]['auroc']:.3f} [{r[k]['interval'][0]:.3f}, {r[k]['interval'][1]:.3f}]"
        out.append(f"  vs {negatives:14} model {auroc('model')}  composition {auroc('composition')}  nearest "
                   f"{auroc('nearest')}  model - composition {ev.auroc_difference(r['difference']['composition'])}  "
                   f"model - nearest {ev.auroc_difference(r['difference']['nearest'])}  (background ratio "
                   f"{r['background ratio']['auroc']:.3f}, target ratio {r['target ratio']['auroc']:.3f})")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(mc.REAL_DATA),
                   help="Mimir CSV of real pairs plus background (default: the shipped PDB pairs, data/pepnn)")
    p.add_argument("--out", default="runs/real", help="folder for the split, the runs and their reports")
    p.add_argument("--name", default="base", help="this run's name (a folder under --out)")
    p.add_argument("--preset", default="small")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides, e.g. epochs=10")
    p.add_argument("--seed", type=int, default=0, help="the split's and the evaluation's seed")
    p.add_argument("--min-peptides", type=int, default=10)
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--background", type=int, default=1000, help="held-out background rows")
    p.add_argument("--draws", type=int, default=mc.DEFAULT_SCORE_DRAWS)
    p.add_argument("--shuffles", type=int, default=3, help="shuffles of each held-out peptide")
    p.add_argument("--samples", type=int, default=100, help="samples per held-out target (0: none); the first "
                   f"{ev.SPECIFICITY_KEEP} novel ones are judged")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--eval-only", action="store_true", help="evaluate the run trained before")
    p.add_argument("--new-receptors", type=int, default=0,
                   help="receptors (with 6-9 peptides) left out of training entirely, then given half their peptides "
                        "as known binders (a run trained with references) and judged on the rest")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows = mc.load_rows(args.data)
        train_idx, held, background = held_out_split(rows, args.min_peptides, args.holdout, args.background, args.seed)
        train_idx, new = new_receptor_split(rows, train_idx, held, args.new_receptors, (6, 9), args.seed)
        train_csv = out / (f"train_seed{args.seed}" + (f"_new{args.new_receptors}" if new else "") + ".csv.gz")
        if not train_csv.exists():
            write_rows(rows, train_idx, train_csv)
        overrides = dict(kv.split("=", 1) for kv in args.set)
        overrides = {k: (v.lower() in ("1", "true")) if isinstance(getattr(mc.Config(), k, None), bool) else v
                     for k, v in overrides.items()}
        cfg = mc.make_config(args.preset, data=str(train_csv), **overrides)
        run_dir, t0 = out / args.name, time.time()
        if not args.eval_only:
            mc.train(cfg, run_dir, resume=True, progress=False)
        run = mc.load_run(run_dir, checkpoint=args.checkpoint)
        train_rows, val = mc.subset_rows(rows, train_idx), heldout_rows(held, background)
        rep = {"settings": {**overrides, "preset": args.preset, "checkpoint": args.checkpoint, "draws": args.draws},
               "guidance": mc.run_guidance(run), "tuning": {k: v for k, v in run.tuning.items() if "grid" not in k},
               "data": {"rows": len(rows.labels), "training rows": len(train_idx), "held-out peptides":
                        sum(map(len, held.values())), "held-out background": len(background)},
               "score": ev.score_auroc_report(run, val, train_rows, args.seed, max_rows=None, draws=args.draws,
                                              min_positives=1, max_targets=None, shuffles=args.shuffles)}
        if args.samples:
            rep.update(generation_reports(run, train_rows, val, args.samples, args.seed))
        if new:
            rep["new receptors"] = new_receptor_report(run, new, train_rows, background, args.samples or 100, args)
        rep["seconds"] = round(time.time() - t0, 1)
    except mc.DataError as e:
        mc.log(f"error: {e}")
        sys.exit(2)
    (run_dir / "real_data.json").write_text(json.dumps(rep, indent=1))
    print(format_report(args.name, rep))


if __name__ == "__main__":
    main()
