# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab,kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# **Before you start**
# - The notebook opens on a T4 GPU runtime. On Colab Pro choose *A100* for the large preset
#   (*Runtime > Change runtime type*). Without a GPU the medium and large presets stop at the runtime
#   check (unless you tick `ALLOW_CPU`).
# - The notebook needs the rest of the Mimir repository. If `REPO_URL` below is empty, step 2 asks for
#   the repository as a zip: download it first from the repository's web page (*Code > Download ZIP*).
#   With `SAVE_TO_DRIVE` the code is kept on your Google Drive, so it is asked for only once.
# - Data: the demo's motif-derived peptides (`demo`), real peptide-receptor pairs from PDB structures
#   (`real_pepnn`), both shipped with the repository, or your own: a CSV (or `.csv.gz`) with the header
#   `label,target,sequence`, on your computer (`upload`) or on Google Drive (`drive`).
#
# **How to use:** set the form below, then *Runtime > Run all*. With the demo data and the small preset
# the whole notebook takes a few minutes on a T4; the Train step says how long a run will take once it
# has timed its first steps.
#
# **Results** go to `/content/checkpoints/<run name>/`, or with `SAVE_TO_DRIVE` to
# `MyDrive/mimir/checkpoints/<run name>/` (the Train step prints the folder): checkpoints, the training
# history, the convergence plot, the evaluation. The last step downloads the model for generation with the
# history and plots (a few MB); the full training state (`last.pt`, `best.pt`) stays in the run folder.
#
# **After a disconnect:** with `SAVE_TO_DRIVE` on, a checkpoint reaches Drive every 5 minutes and at
# every epoch end. Reconnect, keep the same settings and *Run all* again: training resumes where it stopped.

# %% [markdown]
# ## 1. Settings
# - `PRESET`: small (0.74M parameters on the demo data, 0.84M with 800 targets; fine on Colab Free's T4),
#   medium (3.7M / 3.9M), large (21.1M / 21.5M; pick an A100 on Colab Pro).
# - `DATA_SOURCE`: `demo` uses the embedded demo data (12 targets, motif-derived stand-ins); `real_pepnn`
#   the real peptide-receptor pairs of PDB structures shipped in `data/pepnn` (1,761 peptides of 573
#   receptors, most with 1-5 peptides; see step 4); `upload` asks for a CSV once and keeps it for later
#   runs (tick `NEW_UPLOAD` to give another file); `drive` reads `DRIVE_DATA_PATH` from your Google Drive
#   (a path inside *My Drive*, or a full path). The CSV needs the header `label,target,sequence` (an
#   optional `source` column keeps each protein's peptides on one side of the held-out split).
# - `SKIP_INVALID`: train on the valid rows of a file with problems (they are listed either way).
# - `RUN_NAME`: empty means `colab_<preset>_demo`, `colab_<preset>_real_pepnn`, or
#   `colab_<preset>_<file name>_<checksum>` for your data (with `_refs<R>` when `REFERENCES` is set), so
#   other data never continue an old run. The same name and data resume the same run.
# - `SAVE_TO_DRIVE`: keep runs (and the code) on Google Drive, so a disconnect loses nothing.
# - `EPOCHS`: 0 keeps the preset's number of epochs.
# - `ALLOW_CPU`: train the medium or large preset on a CPU runtime anyway (hours).
# - `REFERENCES`: 0 conditions on a target by its id alone; 4 lets the model also read 4 of the target's
#   known binders, so that in step 7 a receptor the run never saw can be given by its known binders
#   (`KNOWN_BINDERS`); README "On real data" says what each does.
# - `REPO_URL`: the git URL of the Mimir repository, for a notebook opened on its own (from GitHub or a
#   file). Left empty, step 2 asks you to upload the repository as a zip.

# %%
# @title Settings
PRESET = "small"  # @param ["small", "medium", "large"]
DATA_SOURCE = "demo"  # @param ["demo", "real_pepnn", "upload", "drive"]
DRIVE_DATA_PATH = "mimir/dataset.csv"  # @param {type:"string"}
NEW_UPLOAD = False  # @param {type:"boolean"}
SKIP_INVALID = False  # @param {type:"boolean"}
RUN_NAME = ""  # @param {type:"string"}
SAVE_TO_DRIVE = False  # @param {type:"boolean"}
EPOCHS = 0  # @param {type:"integer"}
ALLOW_CPU = False  # @param {type:"boolean"}
REFERENCES = 0  # @param {type:"integer"}
# Where the repository is published; the README's "Open in Colab" link names the same one (a test checks).
REPO_URL = ""  # @param {type:"string"}

import os
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
CONTENT = Path(os.environ.get("MIMIR_COLAB_CONTENT", "/content"))   # Colab's working folder
DRIVE = CONTENT / "drive" / "MyDrive"                                # where Google Drive appears once mounted
SMOKE = os.environ.get("MIMIR_SMOKE") == "1"   # set by the test suite: tiny model, 150 steps, on the CPU
if SMOKE:
    PRESET = "tiny"

# %% [markdown]
# ## 2. Code and dependencies
# Finds `mimir_core.py` (in this repository, or fetched before); in Colab it otherwise clones `REPO_URL`,
# or asks you to upload the repository as a zip (on its web page: *Code > Download ZIP*); a wrong file is
# named and asked for again. With `SAVE_TO_DRIVE` the code is kept in `MyDrive/mimir/code` (delete that
# folder to fetch a newer version). Then installs only what is missing; Colab's own PyTorch is never
# reinstalled.

# %%
import io
import shutil
import subprocess
import zipfile

if IN_COLAB and (SAVE_TO_DRIVE or DATA_SOURCE == "drive"):
    from google.colab import drive
    drive.mount(str(CONTENT / "drive"))
CODE = DRIVE / "mimir" / "code" if IN_COLAB and SAVE_TO_DRIVE else CONTENT / "mimir"
places = [Path.cwd(), Path.cwd().parent, CODE, *sorted(CODE.glob("*/"))]
code_dir = next((p for p in places if (p / "mimir_core.py").exists()), None)
if code_dir is None and IN_COLAB:
    shutil.rmtree(CODE, ignore_errors=True)             # what a failed attempt left must not block this one
    if REPO_URL:
        clone = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(CODE)], capture_output=True, text=True)
        if not (CODE / "mimir_core.py").exists():
            shutil.rmtree(CODE, ignore_errors=True)
            raise RuntimeError(f"REPO_URL {REPO_URL} gave no Mimir code ({clone.stderr.strip() or 'no mimir_core.py'})."
                               " Correct REPO_URL, or empty it to upload the repository as a zip.")
        code_dir = CODE
    while code_dir is None:
        from google.colab import files
        print("Upload the Mimir repository as a zip (on its web page: Code > Download ZIP).")
        uploaded = files.upload()
        if not uploaded:
            raise RuntimeError("No file was uploaded: run the notebook again and choose the repository's zip "
                               "(or set REPO_URL).")
        for data in uploaded.values():
            if zipfile.is_zipfile(io.BytesIO(data)):
                zipfile.ZipFile(io.BytesIO(data)).extractall(CODE)
        code_dir = next((p.parent for p in [*CODE.glob("mimir_core.py"), *CODE.glob("*/mimir_core.py")]), None)
        if code_dir is None:
            shutil.rmtree(CODE, ignore_errors=True)
            print(f"{', '.join(uploaded)}: not a zip of the Mimir repository (no mimir_core.py in it). "
                  "Your data come later, in step 4.")
if code_dir is None:
    raise RuntimeError("mimir_core.py not found: open this notebook from the repository's notebooks/ folder")
sys.path.insert(0, str(code_dir))
print(f"Mimir code: {code_dir}")

# %%
import importlib.util

missing = [pkg for pkg in ("numpy", "matplotlib", "tqdm") if importlib.util.find_spec(pkg) is None]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)

import mimir_colab as colab
import mimir_core as mc
import mimir_eval as ev

mc.INTERFACE = "notebook"      # messages name this form's settings, not command-line flags

# %% [markdown]
# ## 3. Runtime check
# You should see your GPU and the precision training will use (T4: fp16 with a gradient scaler;
# A100: bf16). "No GPU" means this runtime is CPU-only: the small preset still works, slowly (on the demo
# with two CPU cores, about 8 minutes of training, 2 of tuning and 3 of evaluation); medium
# and large stop here unless `ALLOW_CPU` is ticked. Switch with *Runtime > Change runtime type*.

# %%
print(colab.runtime_info())
mc.require_gpu(PRESET, allow_cpu=ALLOW_CPU)

# %% [markdown]
# ## 4. Data
# The data are checked with the same rules as the command line: a bad file stops here with the line
# number of every problem (fix the file and upload it again with `NEW_UPLOAD`, or tick `SKIP_INVALID`).
# You should see the rows per label, the number of targets and the length distributions of both labels,
# which should match (otherwise a model could tell the labels apart by length alone).
# - `demo`: 41,800 rows, 12 targets named after human proteins. Its label-1 rows are **motif-derived
#   stand-ins** (windows of real proteins that match a known short linear motif of the target's domain),
#   **not measured interactions**.
# - `real_pepnn`: 26,761 rows. The 1,761 label-1 rows are **real**: peptides bound to a receptor in a PDB
#   structure (the PepNN training set, MIT licence; see `data/pepnn/README.md`). A target is a receptor
#   sequence cluster `C<n>`; `data/pepnn/receptors.csv.gz` names an example PDB entry for each. Of the
#   573 receptors, 310 have one peptide and 27 have ten or more (`C485` 93, `C143` 51, `C121` and `C93`
#   38): expect a warning that some targets have no training rows (their only peptide fell in the
#   held-out split), and ask for a well-populated target in step 7. The 25,000 label-0 rows are windows
#   of the demo's proteins. Training takes a little less time than on the demo. In step 8 expect the
#   nearest training peptide to rank a receptor's held-out peptides better than the model does: the
#   peptides of one receptor are often variants of each other.

# %%
UPLOADS = DRIVE / "mimir" / "uploads" if SAVE_TO_DRIVE else CONTENT / "uploads"   # kept for later runs
DATA_PATH = colab.data_path(DATA_SOURCE, DRIVE_DATA_PATH, NEW_UPLOAD, UPLOADS, DRIVE, IN_COLAB)
rows = mc.load_rows(DATA_PATH or None, skip_invalid=SKIP_INVALID)
print(mc.describe_rows(rows))
colab.plot_lengths(rows);

# %% [markdown]
# ## 5. Train
# A progress bar shows the step and the running ce (cross-entropy of the x0 prediction), vb (the
# variational term) and their weighted sum; after the first steps a line says how long the run will take.
# Each epoch ends with a line of held-out figures and a checkpoint. Running the notebook again with the
# same run name and data resumes the run instead of starting over; a run too short to learn much says so
# (more epochs or more data help). After the last epoch the run tunes itself on its held-out binders
# (about a minute on a T4, a few on a CPU): the guidance its peptides for a target are sampled with, whether
# it makes 4 candidates for each (the target's known binders mutated by hand, with or without its own
# samples) and keeps the one its score likes best, and how its score weighs its two parts; a line says what it chose and why (`tuning.json` in the
# run folder keeps the figures behind the choice).

# %%
import tempfile

if IN_COLAB:
    CHECKPOINT_DIR = DRIVE / "mimir" / "checkpoints" if SAVE_TO_DRIVE else CONTENT / "checkpoints"
else:                                               # beside the code; test runs leave nothing in the repository
    CHECKPOINT_DIR = Path(tempfile.mkdtemp()) if SMOKE else code_dir / "checkpoints"
run_dir = mc.run_dir_for(RUN_NAME or colab.run_name_for(PRESET, DATA_PATH, references=REFERENCES), CHECKPOINT_DIR)
print(f"run folder: {run_dir}")
cfg = mc.make_config(PRESET, data=DATA_PATH, epochs=EPOCHS or None, max_steps=150 if SMOKE else None,
                     save_every_minutes=5, references=REFERENCES or None)
summary = mc.train(cfg, run_dir, resume=True, skip_invalid=SKIP_INVALID, verbose=True)

# %% [markdown]
# ## 6. Convergence
# ce, vb and the loss per step (training, smoothed) and per epoch (held-out). The dashed line is ln K,
# the ce of a uniform guess: a model that learned anything sits well below it. Held-out curves that
# rise while training curves fall mean overfitting. The last panel is what `best.pt` is chosen by: the
# bound of the held-out binders (label-1 rows, bits per residue, lower is better), since the held-out
# loss is mostly background's; the star marks the epoch that sampling uses.

# %%
from IPython.display import Image, display

display(Image(str(run_dir / "convergence.png")))

# %% [markdown]
# ## 7. Samples
# Peptides for three conditions side by side: interacting with any target, interacting with `TARGET`
# (empty: the first target of the data), and background. Change `TARGET`, `MIN_LENGTH` and `MAX_LENGTH`
# to ask for other peptides. `GUIDANCE` (classifier-free guidance) left empty is the run's own choice:
# for a target, the guidance tuned after training on its held-out binders (printed below); without a
# target, 0, which samples what the model learned for the label. A number overrides both: 0 samples
# what the model learned for the condition, more pushes further toward it and, past what the data
# support, exaggerates what sets the condition apart (charge, hydrophobicity).
# `KNOWN_BINDERS`: with a run trained with `REFERENCES`, paste the known binders of a receptor (one per
# line, none needed if it is in the data) and a column shows peptides the model writes reading them.

# %%
TARGET = ""  # @param {type:"string"}
MIN_LENGTH = 8  # @param {type:"integer"}
MAX_LENGTH = 12  # @param {type:"integer"}
GUIDANCE = ""  # @param {type:"string"}
KNOWN_BINDERS = """
"""

model = mc.load_run(run_dir)
guidance = colab.guidance_setting(GUIDANCE)
print(colab.tuning_summary(model))
print(colab.sample_table(model, target=TARGET or model.vocab.targets[0], n=10, min_length=MIN_LENGTH,
                      max_length=MAX_LENGTH, guidance=guidance, binders=KNOWN_BINDERS.split() or None))

# %% [markdown]
# ## 7b. Score and redesign
# **Rank peptides you already have** (a library, a screen's hits, another tool's output) for a target:
# paste them between the quotes, one per line, and set `SCORE_TARGET` (empty: the `TARGET` above). The
# score is how many bits more the model believes a peptide for that target than as background or for
# any other target (the run weighs the two as it tuned them): higher means more like the target's
# peptides. Left empty, the cell scores 8 peptides sampled for the target and 8 sampled as background:
# a model that learned the target ranks most of its own first.
# `mc.score(..., draws=4)` gives steadier scores, four times slower.

# %%
CANDIDATES = """
"""
SCORE_TARGET = ""  # @param {type:"string"}

score_target = SCORE_TARGET or TARGET or model.vocab.targets[0]
candidates = CANDIDATES.split() or (
    mc.generate(model, n=8, target=score_target, min_length=MIN_LENGTH, max_length=MAX_LENGTH,
                guidance=guidance)
    + mc.generate(model, n=8, label=0, min_length=MIN_LENGTH, max_length=MAX_LENGTH, seed=1))
scores = mc.score(model, candidates, score_target)
print(f"target {score_target}, best first:")
print(mc.format_scores(scores, ranked=True))

# %% [markdown]
# **Variants of a known peptide**: the top-ranked one (or `PARENT`) is noised part of the way and denoised
# for the target. `STRENGTH` sets how far: 0 returns the parent, 1 writes from pure noise; around 0.3
# most variants keep most of its residues. Each variant is shown with its score and its identity to
# the parent (the fraction of positions unchanged).

# %%
PARENT = ""  # @param {type:"string"}
STRENGTH = 0.3  # @param {type:"number"}

parent = PARENT or max(scores, key=lambda r: r["score"])["peptide"]
variants = mc.generate_variants(model, parent, n=10, strength=STRENGTH, target=score_target, guidance=guidance)
print(f"variants of {parent} (strength {STRENGTH}), best first:")
for r in sorted(mc.score(model, variants, score_target), key=lambda r: -r["score"]):
    print(f"  {r['peptide']:20} score {r['score']:7.2f}   identity {mc.identity(r['peptide'], parent):.2f}")

# %% [markdown]
# **Fill a template**: keep the residues you know matter and let the model write the rest. A template has
# the peptide's length; residue letters are kept at every step, `x` marks a position to write, e.g.
# `xxPPxYxx`. Empty: the parent above with its first and last two residues rewritten.

# %%
TEMPLATE = ""  # @param {type:"string"}

template = TEMPLATE or "xx" + parent[2:-2] + "xx"
filled = mc.fill_template(model, template, n=10, target=score_target, guidance=guidance)
print(f"template {template}, best first:")
print(mc.format_scores(mc.score(model, filled, score_target), ranked=True))

# %% [markdown]
# ## 8. Evaluation
# Is the model better than what amino-acid composition, or a lookup of the known peptides, gives? Every figure
# sits beside a baseline matched to its condition, with ± one standard error; a difference within 2 SE reads
# "not distinguishable".
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
# - **Target samples**: each sample's identity to its target's training peptides (novel: under 80%), and whether
#   a target's samples sit nearer its held-out peptides than other targets' samples do (`nearer` > 0).
# - **Beside what a biologist makes by hand**: the specificity of the model's peptides for each target (the
#   chance that one aligns better to the target's held-out binders than a peptide made for another target),
#   at matched novelty, beside known binders mutated until novel and beside composition sampling; "model
#   LOSES to mutated binders" means a hand-made variant of a known binder would serve that target better.
# - **Score ranking**: the AUROC of the score for each target's held-out peptides against background, other
#   targets' peptides and the same peptides shuffled, beside composition and the nearest training peptide
#   (BLOSUM62 alignment), the baseline a biologist would try first; `WEIGHTED` averages the targets.
# - **Label conditioning**: how far interacting samples differ from background samples in net charge and
#   hydropathy, beside the training data's gap; "EXAGGERATE" means a caricature of the condition (guiding a
#   label, `GUIDANCE` above 0 with no target, does that).
#
# The plots compare composition and lengths of held-out data, samples and the random baseline. In the test
# suite's smoke mode (a tiny model, 150 steps, one noise draw) the figures mean nothing.

# %%
report = ev.evaluate(run_dir, n_samples=100 if SMOKE else 1000, n_per_target=50 if SMOKE else 200,
                     guidance=guidance, n_draws=1 if SMOKE else ev.DEFAULT_NOISE_DRAWS)
print(ev.format_report(report))
ev.plot_evaluation(report);

# %% [markdown]
# ## 9. Save
# `model.pt` holds what generation needs (weights, vocabulary, config, data statistics; a few MB for the
# small preset). In Colab a zip of it with the history, the plots and the evaluation downloads; unzipped
# it is a run folder that `mc.load_run` and `python mimir_core.py generate --run-name <run name>` read.
# The full training state (`last.pt`, `best.pt`, with the optimizer) stays in the run folder, on Drive
# with `SAVE_TO_DRIVE`; `colab.zip_run(run_dir)` zips all of it.

# %%
model_file = mc.export_model(run_dir)
archive = colab.zip_run(run_dir, checkpoints=False)
print(f"saved {archive} ({archive.stat().st_size / 2**20:.1f} MiB): {model_file.name}, history, plots, evaluation")
if IN_COLAB:
    from google.colab import files
    files.download(str(archive))
