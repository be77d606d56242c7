"""What only the Colab notebook needs: where its data and runs live, uploads, run names, the download.

Map: data_path (demo / upload / Google Drive) with keep_upload; checkpoint_dir; run_name_for; plot_lengths
(the data cell's figure); zip_run (the last cell's download). It imports mimir_core; the engine imports
nothing of it. Messages here speak the notebook's words (its Settings form), never command-line flags.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from mimir_core import (MAX_LEN, MIN_LEN, DataError, Rows, atomic_write, file_checksum, label_length_counts,
                        pyplot)


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
    """The CSV the notebook trains on ("" for the embedded demo): the demo; an upload, asked for once and kept
    in `uploads` for later runs (NEW_UPLOAD asks again); or a path inside Google Drive (`drive` is My Drive;
    outside Colab the path is used as it is)."""
    if source == "demo":
        return ""
    if source == "drive":
        return str(Path(drive) / drive_data_path) if in_colab else drive_data_path
    if source != "upload":
        raise DataError(f"DATA_SOURCE '{source}' is not one of demo, upload, drive")
    if not in_colab:
        raise DataError("DATA_SOURCE 'upload' needs Colab; elsewhere use 'drive' with a local path")
    kept = sorted(Path(uploads).glob("*"))
    if new_upload or not kept:
        from google.colab import files
        print("Upload your CSV (header label,target,sequence).")
        kept = [keep_upload(files.upload(), uploads)]
    print(f"data: {kept[0]} (tick NEW_UPLOAD to upload another file)")
    return str(kept[0])


def run_name_for(preset: str, data: str = "", prefix: str = "colab") -> str:
    """A default run name that differs for different data: <prefix>_<preset>_demo, or
    <prefix>_<preset>_<file name>_<the first 8 hex digits of its sha256>."""
    if not data:
        return f"{prefix}_{preset}_demo"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(data).name.split(".")[0]).strip("_")[:24] or "data"
    return f"{prefix}_{preset}_{stem}_{file_checksum(data)[:8]}"


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
