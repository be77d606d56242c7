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
# *A100* for the large preset), set the form below, then *Runtime > Run all*. With the demo data and the
# small preset the whole notebook takes a few minutes on a T4.
#
# **Results** go to `checkpoints/<RUN_NAME>/` (or to Google Drive with `SAVE_TO_DRIVE`): checkpoints,
# the training history, the convergence plot, the evaluation report. The last cell downloads a zip.
#
# **After a disconnect:** with `SAVE_TO_DRIVE` on, a checkpoint reaches Drive every 5 minutes and at
# every epoch end. Reconnect, keep the same settings and *Run all* again: training resumes where it stopped.

# %% [markdown]
# ## 1. Settings
# - `PRESET`: small (839K parameters, fine on Colab Free's T4), medium (3.9M), large (21.5M, pick an
#   A100 on Colab Pro).
# - `DATA_SOURCE`: `demo` uses the embedded demo data; `upload` asks for a CSV; `drive` reads
#   `DRIVE_DATA_PATH` from your Google Drive. The CSV needs the header `label,target,sequence`
#   (an optional `source` column keeps each protein's peptides on one side of the held-out split).
# - `RUN_NAME`: empty means `colab_<preset>`. The same name resumes the same run.
# - `EPOCHS`: 0 keeps the preset's number of epochs.
# - `REPO_URL`: only needed when this notebook was opened on its own (from GitHub or a file): the git
#   URL of the Mimir repository. Left empty, the next cell asks you to upload the repository as a zip.

# %%
# @title Settings
PRESET = "small"  # @param ["small", "medium", "large"]
DATA_SOURCE = "demo"  # @param ["demo", "upload", "drive"]
DRIVE_DATA_PATH = "/content/drive/MyDrive/mimir/dataset.csv"  # @param {type:"string"}
RUN_NAME = ""  # @param {type:"string"}
SAVE_TO_DRIVE = False  # @param {type:"boolean"}
EPOCHS = 0  # @param {type:"integer"}
REPO_URL = ""  # @param {type:"string"}

import os
import sys

IN_COLAB = "google.colab" in sys.modules
SMOKE = os.environ.get("MIMIR_SMOKE") == "1"   # set by the test suite: tiny model, 150 steps, on the CPU
if SMOKE:
    PRESET, DATA_SOURCE, SAVE_TO_DRIVE, EPOCHS = "tiny", "demo", False, 0
RUN_NAME = RUN_NAME or f"colab_{PRESET}"

# %% [markdown]
# ## 2. Code and dependencies
# Finds `mimir_core.py` (in this repository, or in `/content/mimir`); in Colab it otherwise clones
# `REPO_URL`, or asks you to upload the repository as a zip (on its web page: *Code > Download ZIP*).
# Then installs only what is missing. Colab's own PyTorch is never reinstalled.

# %%
import importlib.util
import subprocess
import zipfile
from pathlib import Path

places = [Path.cwd(), Path.cwd().parent, Path("/content/mimir"), *Path("/content/mimir").glob("*/")]
code_dir = next((p for p in places if (p / "mimir_core.py").exists()), None)
if code_dir is None and IN_COLAB and REPO_URL:
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "/content/mimir"], check=True)
    code_dir = Path("/content/mimir")
elif code_dir is None and IN_COLAB:
    from google.colab import files
    print("Upload the Mimir repository as a zip (its web page: Code > Download ZIP).")
    for name in files.upload():
        zipfile.ZipFile(name).extractall("/content/mimir")
    code_dir = next(p.parent for p in Path("/content/mimir").rglob("mimir_core.py"))
if code_dir is None:
    raise RuntimeError("mimir_core.py not found: open this notebook from the repository's notebooks/ folder")
sys.path.insert(0, str(code_dir))

missing = [pkg for pkg in ("numpy", "matplotlib", "tqdm") if importlib.util.find_spec(pkg) is None]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)

import mimir_core as mc

# %% [markdown]
# ## 3. Runtime check
# You should see your GPU and the precision training will use (T4: fp16 with a gradient scaler;
# A100: bf16). "No GPU" means this runtime is CPU-only: the notebook still works, slowly (the small
# preset on the demo takes about ten minutes); switch with *Runtime > Change runtime type*.

# %%
print(mc.runtime_info())

# %% [markdown]
# ## 4. Data
# The data are checked with the same rules as the command line: a bad file stops here with the line
# number of every problem. You should see the rows per label, the number of targets and the length
# distributions of both labels, which should match (otherwise a model could tell the labels apart by
# length alone). The demo's label-1 rows are **motif-derived stand-ins** (windows of real proteins that
# match a known short linear motif of the target's domain), **not measured interactions**.

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
# A progress bar shows the step and the running ce (cross-entropy of the x0 prediction), vb (the
# variational term) and their weighted sum. Each epoch ends with a line of held-out figures and a
# checkpoint. Running this cell again with the same `RUN_NAME` resumes the run instead of starting over.

# %%
if SAVE_TO_DRIVE and IN_COLAB:
    from google.colab import drive
    drive.mount("/content/drive")
    CHECKPOINT_DIR = "/content/drive/MyDrive/mimir/checkpoints"
else:
    CHECKPOINT_DIR = str(code_dir / "checkpoints")
if SMOKE:                                           # test runs leave nothing behind in the repository
    import tempfile
    CHECKPOINT_DIR = tempfile.mkdtemp()
run_dir = mc.run_dir_for(RUN_NAME, CHECKPOINT_DIR)
cfg = mc.make_config(PRESET, data=DATA_PATH, epochs=EPOCHS or None, max_steps=150 if SMOKE else None,
                     save_every_minutes=5)
summary = mc.train(cfg, run_dir, resume=True, verbose=True)

# %% [markdown]
# ## 6. Convergence
# ce, vb and the loss per step (training, smoothed) and per epoch (held-out). The dashed line is ln K,
# the ce of a uniform guess: a model that learned anything sits well below it. Held-out curves that
# rise while training curves fall mean overfitting; `best.pt` keeps the epoch with the lowest held-out
# loss, and sampling uses it.

# %%
from IPython.display import Image, display

display(Image(str(run_dir / "convergence.png")))

# %% [markdown]
# ## 7. Samples
# Peptides for three conditions side by side: interacting with any target, interacting with `TARGET`
# (empty: the first target of the data), and background. Change `TARGET`, `MIN_LENGTH` and `MAX_LENGTH`
# to ask for other peptides. `GUIDANCE` > 0 pushes harder toward the condition (classifier-free
# guidance; 0 is plain conditional sampling).

# %%
TARGET = ""  # @param {type:"string"}
MIN_LENGTH = 8  # @param {type:"integer"}
MAX_LENGTH = 12  # @param {type:"integer"}
GUIDANCE = 2.0  # @param {type:"number"}

model = mc.load_run(run_dir)
print(mc.sample_table(model, target=TARGET or model.vocab.targets[0], n=10, min_length=MIN_LENGTH,
                      max_length=MAX_LENGTH, guidance=GUIDANCE))

# %% [markdown]
# ## 8. Evaluation
# Is the model better than what amino-acid composition alone gives? Every figure sits beside a baseline
# matched to its condition, with ± one standard error; a difference within 2 SE reads "not distinguishable".
# - **Held-out likelihood** (bits per residue, lower is better): the model's bound on held-out peptides beside
#   the same peptides under their own condition's training composition (background: the background's;
#   interacting: their target's). "beats composition" means the model knows more than which residues are common.
#   **Order bits**: the bound on the same peptides shuffled minus as they are; about 0 means residue order is ignored.
# - **Samples**: validity, uniqueness, novelty and distance to held-out composition and lengths, beside random
#   peptides drawn from the same label's training composition and lengths.
# - **K-mer order**: how much closer the samples' residue pairs are to held-out peptides than the same samples
#   shuffled (`gain` > 0: order helps). The random baseline gains 0; the training row is the data's own gain.
# - **Motif targets** (the demo's): the motif's rate in the target's samples, in composition-matched random
#   peptides and in background samples. **Order enrichment** (rate / rate after shuffling each sample) near 1
#   means the motif's residues are there but not its order; compare it with the training peptides' (`data`).
#   **Specificity**: rate in the target's samples over the other targets' samples.
#
# The plots compare composition and lengths of held-out data, samples and the random baseline. In the test
# suite's smoke mode (a tiny model, 150 steps, one noise draw) the figures mean nothing.

# %%
report = mc.evaluate(run_dir, n_samples=100 if SMOKE else 1000, n_per_target=50 if SMOKE else 200,
                     guidance=GUIDANCE, n_draws=1 if SMOKE else mc.DEFAULT_NOISE_DRAWS)
print(mc.format_report(report))
mc.plot_evaluation(report);

# %% [markdown]
# ## 9. Save
# A zip of the run directory (checkpoints, history, plots, evaluation). In Colab it downloads; elsewhere
# it stays next to the run directory. With `SAVE_TO_DRIVE` the run is on Drive as well.

# %%
archive = mc.zip_run(run_dir)
print(f"saved {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
if IN_COLAB and not SMOKE:
    from google.colab import files
    files.download(str(archive))
