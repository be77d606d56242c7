"""What only the Colab notebook needs: where its data and runs live, uploads, run names, the download.

Map: runtime_info (the runtime check); data_path (demo / real pairs / upload / Google Drive) with keep_upload;
run_name_for; plot_lengths (the data cell's figure); guidance_setting, tuning_summary and sample_table (the
samples cell); zip_run (the last cell's download). It imports mimir_core; the engine imports
nothing of it. Messages here speak the notebook's words (its Settings form), never command-line flags.
"""
from __future__ import annotations

import math
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from mimir_core import (MAX_LEN, MIN_LEN, REAL_DATA, DataError, Rows, Run, amp_dtype,
                        atomic_write, file_checksum, generate, label_length_counts, pick_device, pyplot)


def runtime_info(device: str = "auto", precision: str = "auto") -> str:
    """One paragraph on where training will run: GPU name and memory, precision, or a CPU warning."""
    dev = pick_device(device)
    lines = [f"torch {torch.__version__}, python {sys.version.split()[0]}"]
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        named = {torch.bfloat16: "bf16 mixed precision", torch.float16: "fp16 mixed precision + gradient scaler",
                 None: "fp32"}
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                     f"{props.major}.{props.minor} -> {named[amp_dtype(dev, precision)]}, fused AdamW, TF32 matmuls")
    else:
        lines.append(f"No GPU: training runs on the CPU ({os.cpu_count()} cores) in fp32. Fine for the demo and "
                     f"the tiny preset; for small/medium/large pick a GPU (Colab: Runtime > Change runtime type "
                     f"> T4 GPU, or A100 on Colab Pro).")
    return "\n".join(lines)


def guidance_setting(text: str) -> float | None:
    """The GUIDANCE setting as a number, or None (left empty: the run's own, see mimir_core.run_guidance)."""
    text = str(text).strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and -1 <= value <= 20):
        raise DataError(f"GUIDANCE '{text}' is not a number from -1 to 20: leave it empty for the run's own guidance")
    return value


def tuning_summary(run: Run) -> str:
    """What the run chose for itself after training (tuning.json), in a line or two."""
    tuning = run.tuning
    if not tuning:
        return "this run has not tuned itself (it was trained by an older version): guidance 0, score by background"
    made = (f"the best 1 of {tuning['rank']} candidates ({tuning['pool']}) by its score ({tuning['rank_why']})"
            if tuning.get("rank", 1) > 1 else "its samples")
    return (f"the run's own guidance for a target: {tuning['guidance']:g} ({tuning['why']}); its peptides for a "
            f"target: {made}; its score weighs the background ratio {tuning['score_mix']:g} and the target ratio "
            f"{1 - tuning['score_mix']:g}")


def sample_table(run: Run, target: str | None = None, n: int = 10, min_length: int = MIN_LEN,
                 max_length: int = MAX_LEN, guidance: float | None = None, seed: int = 0,
                 binders: list | None = None) -> str:
    """n peptides for each condition side by side: interacting with any target, interacting with
    `target` (when given), with a receptor known by its `binders` (when given; a run trained with
    references), background. guidance None: the run's own (mimir_core.run_guidance)."""
    conditions = {"interacting, any target": dict(label=1)}
    if target:
        conditions[f"interacting with {target}"] = dict(target=target)
    if binders:
        conditions["with KNOWN_BINDERS' receptor"] = dict(binders=binders)
    conditions["background"] = dict(label=0)
    columns = {title: generate(run, n=n, min_length=min_length, max_length=max_length, guidance=guidance,
                               seed=seed + i, **condition) for i, (title, condition) in enumerate(conditions.items())}
    widths = [max(MAX_LEN, len(title)) for title in columns]
    lines = ["  ".join(title.ljust(w) for title, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(p.ljust(w) for p, w in zip(row, widths)) for row in zip(*columns.values())]
    return "\n".join(lines)


def keep_upload(uploaded: dict, folder) -> Path:
    """Keep a file uploaded in Colab ({name: bytes}, as google.colab.files.upload returns it) as the only
    file in `folder`, so later runs use it without asking again. The bytes are written here rather than
    looked up on disk: Colab saves a second upload of a name as 'name (1)' yet returns the first name."""
    if not uploaded:
        raise DataError("no file was uploaded: run again and choose your CSV file")
    if len(uploaded) > 1:
        raise DataError(f"{len(uploaded)} files were uploaded ({', '.join(uploaded)}): upload one CSV file")
    (name, data), = uploaded.items()
    folder = Path(folder)
    if folder.exists():
        for old in folder.iterdir():
            if old.is_file():
                old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(name).name
    atomic_write(path, lambda f: f.write(data))
    return path


def data_path(source: str, drive_data_path: str, new_upload: bool, uploads, drive, in_colab: bool) -> str:
    """The CSV the notebook trains on ("" for the embedded demo): the demo; the shipped real PDB pairs
    (REAL_DATA, data/pepnn); an upload, asked for once and kept in `uploads` for later runs (NEW_UPLOAD asks
    again); or a path inside Google Drive (`drive` is My Drive; outside Colab the path is used as it is)."""
    if source == "demo":
        return ""
    if source == "real_pepnn":
        if not REAL_DATA.exists():
            raise DataError(f"DATA_SOURCE 'real_pepnn': {REAL_DATA} is missing from this copy of the Mimir code; "
                            f"fetch the code again (with SAVE_TO_DRIVE: delete MyDrive/mimir/code, then Run all)")
        return str(REAL_DATA)
    if source == "drive":
        return str(Path(drive) / drive_data_path) if in_colab else drive_data_path
    if source != "upload":
        raise DataError(f"DATA_SOURCE '{source}' is not one of demo, real_pepnn, upload, drive")
    if not in_colab:
        raise DataError("DATA_SOURCE 'upload' needs Colab; elsewhere use 'drive' with a local path")
    kept = sorted(Path(uploads).glob("*"))
    if new_upload or not kept:
        from google.colab import files
        print("Upload your CSV (header label,target,sequence).")
        kept = [keep_upload(files.upload(), uploads)]
    print(f"data: {kept[0]} (tick NEW_UPLOAD to upload another file)")
    return str(kept[0])


def run_name_for(preset: str, data: str = "", prefix: str = "colab", references: int = 0) -> str:
    """A default run name that differs for different data: <prefix>_<preset>_demo, <prefix>_<preset>_real_pepnn
    for the shipped real pairs, or <prefix>_<preset>_<file name>_<the first 8 hex digits of its sha256>; with
    REFERENCES, _refs<R> after it, so a model that reads known binders never continues one that does not."""
    suffix = f"_refs{references}" if references else ""
    if not data:
        return f"{prefix}_{preset}_demo{suffix}"
    if Path(data).resolve() == REAL_DATA.resolve():
        return f"{prefix}_{preset}_real_pepnn{suffix}"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(data).name.split(".")[0]).strip("_")[:24] or "data"
    return f"{prefix}_{preset}_{stem}_{file_checksum(data)[:8]}{suffix}"


def plot_lengths(rows: Rows, out=None):
    """Length histograms of both labels (fractions), side by side."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    for label, counts, shift in zip((0, 1), label_length_counts(rows), (-0.2, 0.2)):
        ax.bar(np.arange(len(counts)) + shift, counts / max(counts.sum(), 1), width=0.4,
               label=f"label {label} ({counts.sum():,} rows)")
    ax.set_xlim(MIN_LEN - 1, MAX_LEN + 1)
    ax.set_xlabel("peptide length")
    ax.set_ylabel("fraction")
    ax.legend()
    fig.tight_layout()
    if out:
        fig.savefig(out, dpi=100)
    return fig


def zip_run(run_dir, checkpoints: bool = True) -> Path:
    """run_dir as a .zip beside it, for download: <run>.zip with everything, or with checkpoints=False
    <run>_model.zip without last.pt and best.pt (the optimizer state, only needed to resume), which keeps
    model.pt (see mimir_core.export_model), the history, the plots and the evaluation."""
    run_dir = Path(run_dir)
    out = run_dir.with_name(run_dir.name + ("" if checkpoints else "_model") + ".zip")
    left_out = set() if checkpoints else {"last.pt", "best.pt"}

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(run_dir.rglob("*")):
                if path.is_file() and path.name not in left_out and not path.name.endswith(".tmp"):
                    archive.write(path, Path(run_dir.name) / path.relative_to(run_dir))
    atomic_write(out, write)
    return out
