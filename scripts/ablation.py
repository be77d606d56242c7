"""What makes the model write motifs in order: train the small preset on the demo with each lever of the
order-aware model off or on, evaluate every run, and print one table (BENCHMARKS.md shows it).

    python scripts/ablation.py [--variants plain,rotary,...] [--device auto|cpu|cuda] [--epochs N]
                               [--seeds 0,1,...] [--checkpoint-dir checkpoints/ablation] [--out MD] [--table-only]

Each variant is `mimir_core.py train --preset small` with the settings below, then `evaluate` at its
defaults. A finished run is not trained again and an existing evaluation.json is read, not redone, so
the grid can be split over several processes (one --variants list each) and the whole table printed at
the end with --table-only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mimir_core as mc  # noqa: E402

# The levers: rotary attention, the C-terminal distance embedding, label-1 rows repeated each epoch, and a
# moving average of the weights. "default" is the product's small preset as it ships (rotary + termini +
# label-1 rows 8 times); the others change only the settings they name.
VARIANTS = {
    "plain": dict(rotary=False, termini=False, label1_repeat=1),
    "rotary": dict(rotary=True, termini=False, label1_repeat=1),
    "termini": dict(rotary=False, termini=True, label1_repeat=1),
    "repeat8": dict(rotary=False, termini=False, label1_repeat=8),
    "rotary+repeat8": dict(rotary=True, termini=False, label1_repeat=8),
    "rotary+termini": dict(rotary=True, termini=True, label1_repeat=1),
    "default": dict(),
    "default-repeat4": dict(label1_repeat=4),
    "default-repeat16": dict(label1_repeat=16),
    "default+ema": dict(ema_decay=0.999),
}


def run_name(variant: str, seed: int = 0) -> str:
    return "ablation_" + "".join(c if c.isalnum() else "_" for c in variant) + (f"_seed{seed}" if seed else "")


def row_name(variant: str, seed: int = 0) -> str:
    return variant + (f" (seed {seed})" if seed else "")


def train_and_evaluate(variant: str, checkpoint_dir: Path, device: str, epochs: int | None, seed: int = 0) -> dict:
    run_dir = mc.run_dir_for(run_name(variant, seed), checkpoint_dir)
    cfg = mc.make_config("small", device=device, epochs=epochs, seed=seed, **VARIANTS[variant])
    mc.log(f"== {variant}: {run_dir}")
    mc.train(cfg, run_dir, resume=True, progress=False, verbose=True)
    if not (run_dir / "evaluation.json").exists():
        mc.evaluate(run_dir, device=device)
    return summarize(row_name(variant, seed), run_dir)


def summarize(variant: str, run_dir: Path) -> dict:
    """One table row from a run's history.json and evaluation.json."""
    report = json.loads((run_dir / "evaluation.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    label1 = report["likelihood"]["labels"]["1"]
    targets = report["likelihood"]["targets"].values()
    gaps = report["conditioning"].get("property_gaps", {})
    cfg = mc.config_from_saved(json.loads((run_dir / "config.json").read_text()))
    return {"variant": variant, "run_dir": str(run_dir), "steps": history[-1]["step"],
            "settings": ["on" if cfg.rotary else "off", "on" if cfg.termini else "off", str(cfg.label1_repeat),
                         str(cfg.ema_decay or "off")],
            "best_val_ce": min(e["val_ce"] for e in history),
            "bits": label1["bits_per_residue"], "bits_se": label1["bits_per_residue_se"],
            "order_bits": label1["order_bits"]["difference"], "order_bits_se": label1["order_bits"]["se"],
            "targets_using_order": sum(t["order_bits"]["difference"] > 2 * t["order_bits"]["se"] for t in targets),
            "likelihood_targets": len(targets),
            **mc.motif_summary(report["conditioning"]["motifs"]),
            **{f"{p} ratio": gaps.get(p, {}).get("ratio") for p in mc.PROPERTY_SCALES}}


COLUMNS = ("variant", "rotary", "termini", "label-1 repeat", "EMA", "steps", "best held-out ce",
           "label-1 bound, bits/res", "order bits, label 1", "targets whose order bits > 2 SE",
           "targets with motif > 5x background", "median enrichment", "median order enrichment (data's)",
           "targets in order", "unique", "novel", "charge gap / data's", "hydropathy gap / data's")


def format_table(rows: list) -> str:
    number = lambda v, digits=2: "-" if v is None else f"{v:.{digits}f}"
    out = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for r in rows:
        cells = [r["variant"], *r["settings"], str(r["steps"]), f"{r['best_val_ce']:.4f}",
                 mc._pm(r["bits"], r["bits_se"]), mc._pm(r["order_bits"], r["order_bits_se"], signed=True),
                 f"{r['targets_using_order']}/{r['likelihood_targets']}", f"{r['enriched_5x']}/{r['targets']}",
                 number(r["enrichment"], 1),
                 f"{number(r['order_enrichment'])} ({number(r['training_order_enrichment'])})",
                 f"{r['in_order']}/{r['targets']}", number(r["uniqueness"], 3), number(r["novelty"], 3),
                 number(r["net charge ratio"]), number(r["hydropathy ratio"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def seed_list(text: str) -> list:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of whole numbers") from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated names from: " + ", ".join(VARIANTS))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=None, help="override the preset's 20 epochs (a quick look)")
    p.add_argument("--seeds", default=[0], type=seed_list,
                   help="comma-separated training seeds, a run of each variant for each (default 0)")
    p.add_argument("--checkpoint-dir", default="checkpoints/ablation")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    p.add_argument("--table-only", action="store_true",
                   help="train and evaluate nothing: the table of the variants already evaluated")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
    folder = Path(args.checkpoint_dir)
    grid = [(v, seed) for v in names for seed in args.seeds]
    try:
        if args.table_only:
            done = [(v, seed) for v, seed in grid if (folder / run_name(v, seed) / "evaluation.json").exists()]
            if len(done) < len(grid):
                mc.log(f"not evaluated yet, left out: {', '.join(run_name(*g) for g in grid if g not in done)}")
            rows = [summarize(row_name(v, seed), folder / run_name(v, seed)) for v, seed in done]
        else:
            rows = [train_and_evaluate(v, folder, args.device, args.epochs, seed) for v, seed in grid]
    except mc.DataError as e:
        mc.log(f"error: {e}")
        sys.exit(2)
    table = format_table(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
