"""What makes the model write motifs in order: train the small preset on the demo with each lever of the
order-aware model off or on, evaluate every run, and print one table (BENCHMARKS.md shows it).

    python scripts/ablation.py [--variants plain,rotary,...] [--device auto|cpu|cuda] [--epochs N]
                               [--seeds 0,1,...] [--checkpoint-dir checkpoints/ablation] [--out MD] [--table-only]

Each variant is `mimir_core.py train --preset small` with the settings below, then `mimir_eval.py` at
its defaults; the table's figures are mimir_eval's METRICS. A finished run is not trained again and an existing evaluation.json is read, not redone, so
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
import mimir_eval as ev  # noqa: E402

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


def train_and_evaluate(variant: str, checkpoint_dir: Path, device: str, epochs: int | None, seed: int = 0) -> tuple:
    run_dir = mc.run_dir_for(run_name(variant, seed), checkpoint_dir)
    cfg = mc.make_config("small", device=device, epochs=epochs, seed=seed, **VARIANTS[variant])
    mc.log(f"== {variant}: {run_dir}")
    mc.train(cfg, run_dir, resume=True, progress=False, verbose=True)
    if not (run_dir / "evaluation.json").exists():
        ev.evaluate(run_dir, device=device)
    return table_row(row_name(variant, seed), run_dir)


SETTINGS = ("variant", "rotary", "termini", "label-1 repeat", "EMA", "steps", "best held-out ce")


def table_row(variant: str, run_dir: Path) -> tuple:
    """(the run's SETTINGS cells, its evaluation report), from config.json, history.json and evaluation.json."""
    report = json.loads((run_dir / "evaluation.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    cfg = mc.config_from_saved(json.loads((run_dir / "config.json").read_text()))
    on = lambda flag: "on" if flag else "off"
    cells = (variant, on(cfg.rotary), on(cfg.termini), str(cfg.label1_repeat), str(cfg.ema_decay or "off"),
             str(history[-1]["step"]), f"{min(e['val_ce'] for e in history):.4f}")
    return cells, report


def format_table(rows: list) -> str:
    """One row per run: its settings, then the evaluation's METRICS (mimir_eval), as the guidance sweep shows them."""
    return ev.metrics_table(SETTINGS, rows)


def seed_list(text: str) -> list:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of whole numbers") from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated names from: " + ", ".join(VARIANTS))
    p.add_argument("--device", default="auto", type=mc.device_arg, help=f"one of {mc.DEVICES} (default auto)")
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
            rows = [table_row(row_name(v, seed), folder / run_name(v, seed)) for v, seed in done]
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
