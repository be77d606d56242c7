# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Mimir: train a peptide generator
#
# Mimir trains a conditional discrete-diffusion model (D3PM) that writes short peptides (4-20 residues)
# for an interaction label and a target human protein.
#
# **How to use:** pick a GPU runtime (*Runtime > Change runtime type > T4 GPU*; on Colab Pro choose
# *A100* for the large preset), set the form below, then *Runtime > Run all*. With the demo data the
# whole notebook finishes in a few minutes on a T4.
#
# **Results** go to `checkpoints/<RUN_NAME>/` (or to Google Drive with `SAVE_TO_DRIVE`): checkpoints,
# the training history, the convergence plot, the evaluation report. The last cell downloads a zip.
#
# **After a disconnect:** with `SAVE_TO_DRIVE` on, checkpoints are written to Drive every few minutes;
# reconnect, keep the same `RUN_NAME` and *Run all* again: training resumes where it stopped.

# %% [markdown]
# ## 1. Settings
# `PRESET`: small (839K parameters, Colab Free T4), medium (3.9M), large (21.5M, A100 recommended).
# `DATA_SOURCE`: `demo` uses the embedded demo data; `upload` asks for a CSV; `drive` reads
# `DRIVE_DATA_PATH`. The CSV needs the header `label,target,sequence` (optional `source` column).
# `EPOCHS` = 0 keeps the preset's number of epochs.

# %%
# @title Settings
PRESET = "small"  # @param ["small", "medium", "large"]
DATA_SOURCE = "demo"  # @param ["demo", "upload", "drive"]
DRIVE_DATA_PATH = "/content/drive/MyDrive/mimir/dataset.csv"  # @param {type:"string"}
RUN_NAME = "colab_small"  # @param {type:"string"}
SAVE_TO_DRIVE = False  # @param {type:"boolean"}
EPOCHS = 0  # @param {type:"integer"}
REPO_URL = ""  # @param {type:"string"}

import os
import sys

IN_COLAB = "google.colab" in sys.modules
SMOKE = os.environ.get("MIMIR_SMOKE") == "1"   # set by the test suite: tiny model, a few hundred steps
MAX_STEPS = 150 if SMOKE else 0
if SMOKE:
    PRESET, DATA_SOURCE, SAVE_TO_DRIVE = "tiny", "demo", False

# %% [markdown]
# ## 2. Code and dependencies
# Finds `mimir_core.py` (next to this notebook's folder, in `/content/mimir`, or cloned from
# `REPO_URL`) and installs only what is missing. Colab's own PyTorch is never reinstalled.

# %%
import importlib.util
import subprocess
from pathlib import Path

for candidate in (Path.cwd(), Path.cwd().parent, Path("/content/mimir")):
    if (candidate / "mimir_core.py").exists():
        sys.path.insert(0, str(candidate))
        break
else:
    if not IN_COLAB or not REPO_URL:
        raise RuntimeError("mimir_core.py not found: set REPO_URL in the settings to this repository's git URL, "
                           "or upload mimir_core.py and data/ to /content/mimir")
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "/content/mimir"], check=True)
    sys.path.insert(0, "/content/mimir")

missing = [pkg for pkg in ("numpy", "matplotlib", "tqdm") if importlib.util.find_spec(pkg) is None]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)

import mimir_core as mc

# %% [markdown]
# ## 3. Runtime check
# You should see your GPU and the precision training will use (T4: fp16 with a gradient scaler;
# A100: bf16). "No GPU" means this runtime is CPU-only: it still works, slowly; switch with
# *Runtime > Change runtime type*.

# %%
print(mc.runtime_info())

# %% [markdown]
# ## 4. Data
# The data are validated with the same checks as the command line: a bad file stops here with the line
# numbers of every problem. You should see the rows per label, the number of targets and the length
# distributions of both labels. The demo's label-1 rows are motif-derived stand-ins (known short
# linear motif classes found in real proteins), not measured interactions.

# %%
if DATA_SOURCE == "demo":
    DATA_PATH = ""
elif DATA_SOURCE == "upload":
    if not IN_COLAB:
        raise RuntimeError("DATA_SOURCE='upload' needs Colab; elsewhere use 'drive' with a local path")
    from google.colab import files
    DATA_PATH = str(Path(next(iter(files.upload()))).resolve())
else:
    if IN_COLAB:
        from google.colab import drive
        drive.mount("/content/drive")
    DATA_PATH = DRIVE_DATA_PATH

rows = mc.load_rows(DATA_PATH or None)
print(mc.describe_rows(rows))
mc.plot_lengths(rows);

# %% [markdown]
# ## 5. Train
# A progress bar shows the step, ce (cross-entropy of the x0 prediction), vb (the variational term)
# and their weighted sum. Each epoch ends with a line of held-out figures and a checkpoint. Re-running
# this cell with the same `RUN_NAME` resumes the run instead of starting over.

# %%
if SAVE_TO_DRIVE and IN_COLAB:
    from google.colab import drive
    drive.mount("/content/drive")
    CHECKPOINT_DIR = "/content/drive/MyDrive/mimir/checkpoints"
else:
    CHECKPOINT_DIR = str(Path(mc.__file__).parent / "checkpoints")
if SMOKE:                                           # test runs leave nothing behind in the repository
    import tempfile
    CHECKPOINT_DIR = tempfile.mkdtemp()
run_dir = mc.run_dir_for(RUN_NAME, CHECKPOINT_DIR)
cfg = mc.make_config(PRESET, data=DATA_PATH, epochs=EPOCHS or None, max_steps=MAX_STEPS or None,
                     save_every_minutes=5)
summary = mc.train(cfg, run_dir, resume=True, verbose=True)

# %% [markdown]
# ## 6. Convergence
# ce and vb per step (training) and per epoch (held-out). The dashed line is ln K, the ce of a uniform
# guess: a model that learned anything sits below it. Held-out curves that rise while training curves
# fall mean overfitting; `best.pt` keeps the epoch with the lowest held-out loss.

# %%
from IPython.display import Image, display

display(Image(str(run_dir / "convergence.png")))

# %% [markdown]
# ## 7. Samples
# Peptides for label 1 (interacting) and for one target, within a length range. Change `TARGET`,
# `MIN_LENGTH` and `MAX_LENGTH` to ask for other peptides; `GUIDANCE` > 0 pushes harder toward the
# condition (classifier-free guidance).

# %%
TARGET = ""  # @param {type:"string"}
MIN_LENGTH = 8  # @param {type:"integer"}
MAX_LENGTH = 12  # @param {type:"integer"}
GUIDANCE = 1.0  # @param {type:"number"}

model = mc.load_run(run_dir)
target = TARGET or model.vocab.targets[0]
for seed, (title, condition) in enumerate((("interacting, any target", dict(label=1)),
                                           (f"interacting with {target}", dict(target=target)),
                                           ("background", dict(label=0)))):
    peptides = mc.generate(model, n=10, min_length=MIN_LENGTH, max_length=MAX_LENGTH, guidance=GUIDANCE,
                           seed=seed, **condition)
    print(f"{title}:\n  " + "  ".join(peptides))

# %% [markdown]
# ## 8. Evaluation
# How good is the model, told honestly: held-out likelihood in bits per residue beside the amino-acid
# composition baseline (a model that does not beat it says so), sample validity, uniqueness, novelty
# and distribution distances beside a random baseline, and, for the demo's motif targets, how much more
# often target-conditioned samples carry the target's motif than background samples.

# %%
report = mc.evaluate(run_dir, n_samples=100 if SMOKE else 1000, n_per_target=50 if SMOKE else 200,
                     guidance=GUIDANCE)
print(mc.format_report(report))
mc.plot_evaluation(report);

# %% [markdown]
# ## 9. Save
# A zip of the run directory (checkpoints, history, plots, evaluation). In Colab it downloads;
# elsewhere it stays next to the run directory.

# %%
archive = mc.zip_run(run_dir)
print(f"saved {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
if IN_COLAB and not SMOKE:
    from google.colab import files
    files.download(str(archive))
