"""Mimir's engine: a length-aware conditional discrete-diffusion model (D3PM) that writes short peptides.

The model is an x0-predictor: a bidirectional transformer that sees a noised peptide x_t, the
diffusion step t, an interaction label and a target protein, and predicts the clean peptide x0.
Noise is D3PM's uniform transition over residue letters with a cosine schedule (Austin et al. 2021).
PAD positions are never noised, scored or generated: a peptide's length is chosen first and the
diffusion runs over its residues only.

Map (sections in the order data flows; nothing refers forward):
  Config        Config, PRESETS, make_config (every setting range-checked), the errors users see
  Runtime       device and precision (pick_device, amp_dtype, autocast), messages, atomic file writes
  Data          read and validate a CSV (load_rows), Vocab, the held-out split, data_stats, verify-data
  Similarity    BLOSUM62 local alignment, identity, novelty, specificity of peptides made for targets
  Model         X0Transformer: rotary attention over residue rows, conditioned on step, label, target
                (and, with cfg.references, the target's known binders: ReferenceEncoder)
  Diffusion     D3PM: q(x_t | x0), posteriors, the training losses ce and vb, the variational bound
  Run folder    checkpoints (load, export), resume policy (which checkpoint, which config, same data)
  Training      lr schedule, optimizer, device-resident data, StepLog (per-step losses), Trainer
  Sampling      load_run, sample_tokens (the reverse process), generate / generate_variants / fill_template
  Scoring       score (the target against background and against any target, in bits)
  Tuning        what a run sets for itself on its validation split (guidance, score mix); train()
  Command line  train, generate, score, verify-data, presets

It imports nothing of the project. The evaluation report lives in mimir_eval.py, what only the
notebook needs in mimir_colab.py, the tools in scripts/ (train.py, build_dataset.py, benchmark.py and
its reference_impl.py, ablation.py, real_data.py).

Where to change the common things: the noise schedule in D3PM.__init__; the network in
X0Transformer; a preset in PRESETS; a setting in Config (its range in SETTING_RANGES); the loss in
D3PM.losses; what a run tunes in the Tuning section (GUIDANCE_GRID, SCORE_MIXES, the guards); a metric
of the evaluation in mimir_eval.py (its METRICS list).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import difflib
import gzip
import hashlib
import io
import itertools
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# =============================================================================================
# Config
# =============================================================================================


class DataError(ValueError):
    """Bad input (a file, a setting). The message names the file and line, or the setting, and the problem."""


class DiskError(OSError):
    """A file could not be written (disk full, read-only, no permission); the message says which file
    and what was kept."""


MIN_LEN, MAX_LEN = 4, 20            # peptide lengths the product supports; tensors are padded to MAX_LEN
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"   # the 20 standard amino acids, always in the vocabulary
RARE_RESIDUES = "BJOUXZ"            # IUPAC letters that may occur in data (ambiguous / rare residues)
PAD = 0                             # token 0 is padding; residue letters are tokens 1..K
UNKNOWN_TARGET = 0                  # target id 0: no target (background) or "any target" (guidance)
UNKNOWN_LABEL = 2                   # label id 2: "no label", used for classifier-free guidance
REPO_DIR = Path(__file__).resolve().parent
DEMO_DATA = REPO_DIR / "data" / "demo" / "dataset.csv.gz"
REAL_DATA = REPO_DIR / "data" / "pepnn" / "dataset.csv.gz"      # real PDB peptide-receptor pairs (data/pepnn)
DEMO_MOTIFS = REPO_DIR / "data" / "demo" / "motifs.json"
CHECKPOINT_FORMAT = "mimir-checkpoint-1"


@dataclass
class Config:
    preset: str = "small"
    # model
    dim: int = 128
    n_layers: int = 3
    n_heads: int = 4
    dropout: float = 0.0
    rotary: bool = True             # rotary attention: a motif reads the same at every offset
    termini: bool = True            # embed each residue's distance from both ends (C-terminal motifs)
    # diffusion
    n_steps: int = 10               # T, the number of diffusion steps
    hybrid_coeff: float = 0.0       # loss = ce + hybrid_coeff * vb
    noise: str = "uniform"          # uniform (D3PM's) or absorbing (masked diffusion; see D3PM)
    cond_drop: float = 0.1          # probability of dropping the condition (classifier-free guidance)
    label1_repeat: int = 8          # each epoch shows every label-1 training row this many times
    references: int = 0             # known binders of its target each row reads (0: the target id alone)
    id_drop: float = 0.5            # with references: how often the target id is hidden and they alone tell it
    reference_attention: bool = False   # with references: the peptide's residues also attend to theirs
    # optimisation
    lr: float = 5e-4
    warmup: int = 500
    epochs: int = 20
    max_steps: int = 0              # 0: no limit; with --epochs, whichever comes first stops the run
    batch_size: int = 256
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.0          # >0: sample and evaluate with an exponential moving average of the weights
    seed: int = 0
    # run
    data: str = ""                  # CSV path; "" means the embedded demo data
    val_fraction: float = 0.05
    max_val_rows: int = 16384       # held-out rows scored at each epoch end (a fixed subset)
    save_every_minutes: float = 10.0
    log_every: int = 50             # steps between reads of the on-device loss buffer
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"         # auto: bf16 on compute capability 8.0+, fp16 with a gradient scaler before
    cuda_graph: bool = False        # replay the training step as one CUDA graph (one GPU, no DDP, no compile)


# The guide's presets (all batch 256). Parameter counts with vocab 25 and 800 targets: 839K, 3.9M, 21.5M.
# They sample with a moving average of the weights (EMA 0.999): on the demo and on real PDB pairs it gave
# the held-out binders their best bound of every setting tried (README, "What each lever does").
PRESETS = {
    "tiny": dict(dim=32, n_layers=2, n_heads=2, n_steps=10, hybrid_coeff=0.001, lr=2e-3, warmup=20,
                 epochs=2, batch_size=64),
    "small": dict(dim=128, n_layers=3, n_heads=4, n_steps=10, hybrid_coeff=0.0, lr=5e-4, warmup=500,
                  epochs=20, ema_decay=0.999),
    "medium": dict(dim=256, n_layers=4, n_heads=4, n_steps=25, hybrid_coeff=0.001, lr=3e-4, warmup=1000,
                   epochs=75, ema_decay=0.999),
    "large": dict(dim=512, n_layers=6, n_heads=8, n_steps=35, hybrid_coeff=0.01, lr=1e-4, warmup=2000,
                  epochs=150, ema_decay=0.999),
}


# Settings that runs saved before they existed did without; such a run keeps its own behaviour.
LEGACY_SETTINGS = {"rotary": False, "termini": False, "label1_repeat": 1, "ema_decay": 0.0}


def config_from_saved(saved: dict) -> Config:
    """The Config of a saved run (config.json or a checkpoint), older runs included. A setting this version
    does not know (a run saved by another version) is a DataError naming it."""
    unknown = sorted(set(saved) - {f.name for f in fields(Config)})
    if unknown:
        raise DataError(f"the run was saved with settings this version of Mimir does not know: {', '.join(unknown)}")
    return Config(**{**LEGACY_SETTINGS, **saved})


MAX_REFERENCES = 32                # known binders a row can read
NOISES = ("uniform", "absorbing")               # the forward process (see D3PM)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")     # the training step's precision on a GPU (the CPU trains in fp32)
DEVICES = "auto, cpu, cuda, cuda:N"     # auto: CUDA when a GPU is visible, else the CPU
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


# What each setting may hold: (the allowed range in words, the test). A value outside it would crash
# later, or worse, train silently on something else (cond_drop 0.5 drops every target).
SETTING_RANGES = {
    "dim": ("an even whole number >= 2", lambda v: v >= 2 and v % 2 == 0),    # sin + cos halves of the step
    "n_layers": (">= 1", lambda v: v >= 1),
    "n_heads": (">= 1", lambda v: v >= 1),
    "dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "n_steps": (">= 1", lambda v: v >= 1),
    "hybrid_coeff": (">= 0", lambda v: v >= 0),
    "cond_drop": ("in [0, 0.5) (the target is dropped with twice this probability)", lambda v: 0 <= v < 0.5),
    "label1_repeat": (">= 1", lambda v: v >= 1),
    "references": (f"in [0, {MAX_REFERENCES}] (0: the target id alone)", lambda v: 0 <= v <= MAX_REFERENCES),
    "id_drop": ("in [0, 1] (1: the references alone tell the target)", lambda v: 0 <= v <= 1),
    "ema_decay": ("in [0, 1) (0: no moving average)", lambda v: 0 <= v < 1),
    "lr": ("> 0", lambda v: v > 0),
    "warmup": (">= 0", lambda v: v >= 0),
    "epochs": (">= 1", lambda v: v >= 1),
    "max_steps": (">= 0 (0: no limit)", lambda v: v >= 0),
    "batch_size": (">= 1", lambda v: v >= 1),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "grad_clip": ("> 0", lambda v: v > 0),
    "seed": ("in [0, 2**32)", lambda v: 0 <= v < 2**32),
    "val_fraction": ("in [0, 1)", lambda v: 0 <= v < 1),
    "max_val_rows": (">= 1", lambda v: v >= 1),
    "save_every_minutes": (">= 0 (0: at every loss read)", lambda v: v >= 0),
    "log_every": (">= 1", lambda v: v >= 1),
    "device": (f"one of {DEVICES}", lambda v: re.fullmatch(DEVICE_PATTERN, v) is not None),
    "precision": ("one of " + ", ".join(PRECISIONS), lambda v: v in PRECISIONS),
    "noise": ("one of " + ", ".join(NOISES), lambda v: v in NOISES),
}


def setting_value(name: str, kind: type, value):
    """value as the setting's type, or a DataError naming the setting: no silent truncation (epochs 2.5),
    no bool('False'), no NaN or inf."""
    def bad(why):
        return DataError(f"setting {name} = {value!r}: {why}")
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise bad("must be True or False")
        return bool(value)
    if kind is str:
        return str(value)
    try:
        number = float(value) if not isinstance(value, (bool, np.bool_)) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise bad("must be a number")
    if not math.isfinite(number):
        raise bad("must be a finite number")
    if kind is int:
        if isinstance(value, (int, np.integer)):
            return int(value)
        if not number.is_integer():
            raise bad("must be a whole number")
        return int(number)
    return number


def make_config(preset: str = "small", **overrides) -> Config:
    """A preset's config with overrides (None values are ignored, so CLI defaults can pass through).
    Every setting is checked against its allowed range (SETTING_RANGES); a bad one is a DataError
    that names it and its range."""
    if preset not in PRESETS:
        raise DataError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    cfg = Config(preset=preset, **PRESETS[preset])
    kinds = {f.name: type(f.default) for f in fields(Config)}
    for key, value in overrides.items():
        if key not in kinds:
            raise DataError(f"unknown config setting '{key}'")
        if value is not None:
            setattr(cfg, key, setting_value(key, kinds[key], value))
    for key, (allowed, ok) in SETTING_RANGES.items():
        value = getattr(cfg, key)
        if not ok(value):
            raise DataError(f"setting {key} = {value!r} is out of range: it must be {allowed}")
    if cfg.dim % cfg.n_heads:
        raise DataError(f"setting dim = {cfg.dim} is not divisible by n_heads = {cfg.n_heads}")
    if cfg.rotary and (cfg.dim // cfg.n_heads) % 2:
        raise DataError(f"setting dim / n_heads = {cfg.dim // cfg.n_heads} must be even for rotary attention")
    return cfg


# =============================================================================================
# Runtime: device, precision, messages, files
# =============================================================================================


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"device {name} was asked for, but no CUDA GPU is visible")
    return torch.device(name)


DDP_TIMEOUT_S = int(os.environ.get("MIMIR_DDP_TIMEOUT", "600"))   # a rank stuck this long fails the run


def distributed_setup(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group, NCCL on
    CUDA and gloo on the CPU, one GPU per local rank; a plain `python` run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if world == 1:
        return 0, 1, dev
    import datetime
    import torch.distributed as dist
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=DDP_TIMEOUT_S))
    return dist.get_rank(), dist.get_world_size(), dev


def amp_dtype(device: torch.device, precision: str = "auto"):
    """Mixed-precision dtype for `precision` (PRECISIONS), None for fp32. auto: bf16 on compute capability
    >= 8.0 (A100), fp16 before (T4), where fp16 trains with a gradient scaler. The CPU always runs in fp32.
    torch.cuda.is_bf16_supported() can say yes on a T4 (emulated, slow), so ask for the capability."""
    if device.type != "cuda" or precision == "fp32":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if precision == "bf16" and major < 8:
        raise DataError(f"precision bf16 needs a GPU of compute capability 8.0 or newer (A100, H100); this one is "
                        f"{major}.{minor}: choose precision fp16 (with the gradient scaler), fp32 or auto")
    if precision == "fp16" or (precision == "auto" and major < 8):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision (amp_dtype) for the model's forward passes; a no-op on the CPU and in fp32. Everything
    after the logits (losses, posteriors, sampling) runs in fp32."""
    dtype = amp_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextlib.contextmanager
def full_precision(device: torch.device):
    """fp32 with TF32 matmuls off, for the likelihood bound and scores: they must not depend on the batch a
    peptide is scored in, and bf16 logits (or TF32 products) move a peptide's bound by hundredths of a bit
    with the batch's shape. Autocast is simply not entered; this only switches TF32 off on CUDA."""
    if device.type != "cuda":
        yield
        return
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def pyplot():
    """pyplot without a display where there is none (CLI, CI); notebooks keep their inline backend."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Messages name the user's controls in the words of the interface in use: the command line's flags, or
# the notebook's settings (the notebook sets INTERFACE = "notebook"; a notebook user has no flags).
INTERFACE = "cli"
CONTROLS = {
    "skip_invalid": {"cli": "pass --skip-invalid", "notebook": "tick SKIP_INVALID in the Settings"},
    "resume": {"cli": "pass --resume", "notebook": "run the notebook again with the same RUN_NAME"},
    "run_name": {"cli": "--run-name", "notebook": "RUN_NAME in the Settings"},
    "epochs": {"cli": "--epochs", "notebook": "EPOCHS in the Settings"},
    "allow_cpu": {"cli": "pass --device cpu", "notebook": "tick ALLOW_CPU in the Settings"},
    "references": {"cli": "--references R", "notebook": "REFERENCES in the Settings"},
}


def control(name: str) -> str:
    """How the user in the current interface works the control `name` (see CONTROLS)."""
    return CONTROLS[name][INTERFACE]


GPU_PRESETS = ("medium", "large")       # hours or days of training on a CPU


def require_gpu(preset: str, allow_cpu: bool = False, device: str = "auto") -> None:
    """Stop before a preset meant for a GPU starts training on a CPU, unless the user said go on anyway."""
    if preset in GPU_PRESETS and pick_device(device).type == "cpu" and not allow_cpu:
        raise DataError(f"no GPU: the {preset} preset would train for hours on this CPU. Use a GPU (Colab: Runtime > "
                        f"Change runtime type > T4 GPU), choose the small preset, or {control('allow_cpu')} "
                        f"to train on the CPU anyway.")


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename it, so a kill never leaves a half-written file. When the
    disk refuses (full, read-only), the temporary file goes, `path` keeps its old content, and the
    error is a DiskError that says so."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        kept = f"{path.name} keeps its previous content" if path.exists() else f"{path.name} was not written"
        raise DiskError(f"cannot write {path}: {e.strerror or e}; {kept}") from e


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


# =============================================================================================
# Data: load, validate, tokenize, split
# =============================================================================================


@dataclass
class Rows:
    """A validated dataset: one entry per CSV row, in file order."""
    path: str
    labels: np.ndarray          # (N,) int64, 0 or 1
    targets: list               # (N,) str, "" for background rows
    sequences: list             # (N,) str, uppercase
    sources: list | None        # (N,) str, the protein a row came from, when the file has that column
    lines: np.ndarray           # (N,) the 1-based line number of each row in the file


@dataclass
class Vocab:
    letters: str                # residue letters; token of letters[i] is i + 1
    targets: list               # target accessions; id of targets[i] is i + 1

    @property
    def size(self) -> int:      # tokens, PAD included
        return len(self.letters) + 1

    @property
    def num_targets(self) -> int:  # target ids, the unknown slot included
        return len(self.targets) + 1

    @classmethod
    def from_rows(cls, rows: Rows) -> "Vocab":
        seen = set("".join(rows.sequences))
        letters = RESIDUES + "".join(c for c in RARE_RESIDUES if c in seen)
        return cls(letters, sorted({t for t in rows.targets if t}))

    def encode(self, sequences) -> np.ndarray:
        """(N, MAX_LEN) uint8 tokens, PAD-filled, with no per-sequence Python work."""
        raw = np.array(sequences, dtype=f"S{MAX_LEN}").view(np.uint8).reshape(len(sequences), MAX_LEN)
        lut = np.zeros(256, dtype=np.uint8)            # NUL padding maps to PAD
        lut[np.frombuffer(self.letters.encode(), dtype=np.uint8)] = np.arange(1, len(self.letters) + 1)
        return lut[raw]

    def decode(self, tokens) -> list:
        table = np.array([""] + list(self.letters), dtype=object)
        return ["".join(row) for row in table[np.asarray(tokens)]]

    def target_ids(self, targets) -> np.ndarray:
        index = {t: i + 1 for i, t in enumerate(self.targets)}
        return np.array([index.get(t, UNKNOWN_TARGET) for t in targets], dtype=np.int64)

    def target_id(self, target: str | None) -> int:
        """The id of a target accession; a clear error with close matches when it is unknown."""
        if not target:
            return UNKNOWN_TARGET
        if target in self.targets:
            return self.targets.index(target) + 1
        close = difflib.get_close_matches(target, self.targets, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise DataError(f"unknown target '{target}': this model was trained on {len(self.targets)} targets{hint}")


_NOT_A_LETTER = re.compile(f"[^{RESIDUES}{RARE_RESIDUES}]")


class Reason(str):
    """A problem's text, which also knows its kind: the text with the row's own values left out
    ("label '...' is not 0 or 1", "length N outside 4-20"), so problems can be counted by kind."""

    def __new__(cls, template: str, *values):
        reason = super().__new__(cls, template.format(*values))
        reason.kind = template.format(*("N" if isinstance(v, int) else "..." for v in values))
        return reason


def _open_text(path: Path):
    """Text handle for .csv or .csv.gz; utf-8-sig drops a BOM, newline='' lets csv handle CRLF."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_rows(path) -> tuple[Rows, list]:
    """Parse a `label,target,sequence[,source]` CSV. Returns every row that parsed and the list of
    problems (line, reason) found in the file; nothing is dropped here without being listed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    problems = []
    labels, targets, sequences, sources, lines = [], [], [], [], []
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            required = ["label", "target", "sequence"]
            unexpected = [h for h in header if h not in required + ["source"]]
            if any(h not in header for h in required) or unexpected or len(set(header)) < len(header):
                raise DataError(f"{path}, line 1: bad header {','.join(header) or '(empty)'}; expected "
                                f"label,target,sequence with an optional source column")
            col = {h: i for i, h in enumerate(header)}
            il, it, iseq, isrc = col["label"], col["target"], col["sequence"], col.get("source")
            for lineno, row in enumerate(reader, start=2):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue                                   # blank line
                if len(row) != len(header):
                    problems.append((lineno, Reason("{} fields, expected {}", len(row), len(header))))
                    continue
                label, target, seq = row[il].strip(), row[it].strip(), row[iseq].strip().upper()
                if label not in ("0", "1"):
                    problems.append((lineno, Reason("label '{}' is not 0 or 1", label)))
                    continue
                labels.append(int(label))
                targets.append(target)
                sequences.append(seq)
                sources.append(row[isrc].strip() if isrc is not None else "")
                lines.append(lineno)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from e
    except OSError as e:                                # a directory, no permission, a failing disk
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from e
    rows = Rows(str(path), np.array(labels, dtype=np.int64), targets, sequences,
                sources if isrc is not None else None, np.array(lines, dtype=np.int64))
    return rows, problems


def row_problems(rows: Rows) -> list:
    """Every contract violation of parsed rows as (row index, reason)."""
    problems = []
    first_seen = {}                 # (label, target, sequence) -> line
    interacting = {}                # sequence -> line of its first label-1 row
    for i, (label, target, seq) in enumerate(zip(rows.labels.tolist(), rows.targets, rows.sequences)):
        if label == 1 and not target:
            problems.append((i, Reason("label-1 row without a target")))
        elif label == 0 and target:
            problems.append((i, Reason("label-0 row with target '{}' (background rows have none)", target)))
        bad = _NOT_A_LETTER.search(seq)
        if bad:
            problems.append((i, Reason("{!r} at position {} is not a residue letter", bad.group(), bad.start() + 1)))
        if not MIN_LEN <= len(seq) <= MAX_LEN:
            problems.append((i, Reason(f"length {{}} outside {MIN_LEN}-{MAX_LEN}", len(seq))))
        key = (label, target, seq)
        if key in first_seen:
            problems.append((i, Reason("duplicate of line {}", first_seen[key])))
        else:
            first_seen[key] = int(rows.lines[i])
        if label == 1:
            interacting.setdefault(seq, int(rows.lines[i]))
    for i, (label, seq) in enumerate(zip(rows.labels.tolist(), rows.sequences)):
        if label == 0 and seq in interacting:
            problems.append((i, Reason("background sequence equals the interacting peptide on line {}", interacting[seq])))
    return problems


def summarize_problems(path, problems: list, limit: int = 20) -> str:
    """'N problems' + a count per kind + the first `limit` problems with their lines."""
    kinds = {}
    for _, reason in problems:
        kind = getattr(reason, "kind", reason)
        kinds[kind] = kinds.get(kind, 0) + 1
    out = [f"{path}: {len(problems)} problem(s) in {len({line for line, _ in problems})} line(s):"]
    out += [f"  {n} x {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])]
    out += [f"  line {line}: {reason}" for line, reason in sorted(problems)[:limit]]
    if len(problems) > limit:
        out.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(out)


def check_rows(path) -> tuple[Rows, list, list]:
    """Parse and check a file: (parsed rows, every problem as (line, reason), indices of bad parsed rows)."""
    rows, parse_problems = read_rows(path)
    bad_rows = row_problems(rows)
    return rows, parse_problems + [(int(rows.lines[i]), reason) for i, reason in bad_rows], bad_rows


def load_rows(path=None, skip_invalid: bool = False) -> Rows:
    """Load and validate a dataset (the demo when path is None or ''). Any problem is an error that
    lists them all; with skip_invalid the bad rows are left out and reported on stderr."""
    path = Path(path) if path else DEMO_DATA
    rows, problems, bad_rows = check_rows(path)
    if problems and not skip_invalid:
        raise DataError(summarize_problems(path, problems)
                        + f"\nFix the file, or {control('skip_invalid')} to train on the valid rows only.")
    if problems:
        log(summarize_problems(path, problems) + f"\nSkipping {len(problems)} problem(s) as asked.")
        keep = np.ones(len(rows.sequences), dtype=bool)
        keep[[i for i, _ in bad_rows]] = False
        rows = subset_rows(rows, np.flatnonzero(keep))
    if len(rows.sequences) == 0:
        raise DataError(f"{path}: no valid rows")
    return rows


def file_checksum(path) -> str:
    """sha256 of a file's bytes: how a run knows the data it was trained on, wherever the file lives."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_rows(rows: Rows) -> str:
    """A short summary: rows per label, targets, and the length distributions of both labels."""
    n1 = int((rows.labels == 1).sum())
    targets = {}
    for t in rows.targets:
        if t:
            targets[t] = targets.get(t, 0) + 1
    top = ", ".join(f"{t} ({n})" for t, n in sorted(targets.items(), key=lambda kv: -kv[1])[:5])
    hist = label_length_counts(rows)
    return (f"{rows.path}: {len(rows.sequences):,} rows: {len(rows.sequences) - n1:,} background (label 0), "
            f"{n1:,} interacting (label 1) over {len(targets)} targets\n"
            f"most rows: {top or '-'}\n" + format_length_table(hist[0], hist[1]))


def length_counts(sequences, size: int = MAX_LEN + 1) -> np.ndarray:
    """How many sequences have each length: (size,) counts of lengths 0..size-1, longer when some
    sequence is longer (a file being checked breaks the length contract: its rows get counted)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    return np.bincount(lengths, minlength=size)


def label_length_counts(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Length histograms of label 0 and label 1, both over the same lengths."""
    size = len(length_counts(rows.sequences))
    return tuple(length_counts([s for s, x in zip(rows.sequences, rows.labels.tolist()) if x == label], size)
                 for label in (0, 1))


def letter_counts(tokens, groups, n_groups: int, n_letters: int) -> np.ndarray:
    """(n_groups, n_letters): how often each residue letter occurs in each group's rows, for tokens (N, L)
    as Vocab.encode makes them and groups (N,) in [0, n_groups): a row's index gives each peptide's
    counts, a label or a target id each condition's, zeros the whole set's. PAD is not counted."""
    flat = np.asarray(groups, dtype=np.int64)[:, None] * (n_letters + 1) + np.asarray(tokens, dtype=np.int64)
    counts = np.bincount(flat.ravel(), minlength=n_groups * (n_letters + 1))
    return counts.reshape(n_groups, n_letters + 1)[:, 1:]


def subset_rows(rows: Rows, idx) -> Rows:
    idx = np.asarray(idx, dtype=np.int64)
    pick = lambda xs: [xs[i] for i in idx.tolist()]
    return Rows(rows.path, rows.labels[idx], pick(rows.targets), pick(rows.sequences),
                pick(rows.sources) if rows.sources is not None else None, rows.lines[idx])


def split_indices(rows: Rows, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / held-out split by group: the source protein when the file names one (so
    overlapping windows of a protein never straddle the split), else the sequence itself. A group is
    held out when a hash of its key falls below val_fraction; each label gets at least one group."""
    # An empty source names no protein: the row is a group of its own, as without a source column. One
    # shared group "" would send every such row to one side (its hash, 0, is below any val_fraction).
    keys = rows.sequences if rows.sources is None else [s or seq for s, seq in zip(rows.sources, rows.sequences)]
    group_hash = {k: zlib.crc32(k.encode()) / 2**32 for k in set(keys)}
    h = np.array([group_hash[k] for k in keys])
    is_val = h < val_fraction
    for label in (0, 1):
        in_label = rows.labels == label
        if val_fraction > 0 and in_label.any() and not (is_val & in_label).any():
            label_groups = sorted({keys[i] for i in np.flatnonzero(in_label)}, key=group_hash.get)
            if len(label_groups) >= 2:                      # never hold out a label's only group
                is_val |= h == group_hash[label_groups[0]]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def split_groups(rows: Rows, idx: list) -> str:
    """What groups these rows form, in words: their sources, and how many rows have none."""
    sources = [rows.sources[i] for i in idx if rows.sources[i]] if rows.sources is not None else []
    named = sorted(set(sources))
    more = f" and {len(named) - 5} more" if len(named) > 5 else ""
    parts = [f"source(s) {', '.join(named[:5])}{more}"] if named else []
    if len(idx) > len(sources):
        parts.append(f"{len(idx) - len(sources)} row(s) without a source")
    return " and ".join(parts)


def split_for_training(rows: Rows, val_fraction: float, quiet: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """split_indices, checked: a label whose rows all fell in the held-out split is a DataError naming it
    (training would go on without ever seeing it); targets left with no training rows get a warning
    naming them, unless quiet (their rows still serve the held-out figures)."""
    train_idx, val_idx = split_indices(rows, val_fraction)
    for label in (0, 1):
        held = val_idx[rows.labels[val_idx] == label].tolist()
        if held and not (rows.labels[train_idx] == label).any():
            raise DataError(f"{rows.path}: the held-out split ({val_fraction:.0%} of the groups) takes all {len(held)} "
                            f"label-{label} rows and leaves none to train on; they come from "
                            f"{split_groups(rows, held)}. Rows of one source stay on one side of the split: give "
                            f"these rows more sources (an empty source makes a row a group of its own).")
    targets_of = lambda idx: {rows.targets[i] for i in idx[rows.labels[idx] == 1].tolist()}   # label 1's
    untrained = sorted(targets_of(val_idx) - targets_of(train_idx))
    if untrained and not quiet:
        log(f"warning: {len(untrained)} target(s) have no training rows: all their rows in {rows.path} fell in the "
            f"held-out split (by source, or by sequence where a row has none). The model cannot learn them, and "
            f"peptides generated for them come from an untrained target: {', '.join(untrained[:10])}"
            + (f" and {len(untrained) - 10} more" if len(untrained) > 10 else ""))
    return train_idx, val_idx


HELDOUT_SUBSET_SEED = 0


def heldout_subset(n: int, max_rows: int) -> np.ndarray:
    """Which of n held-out rows to score when at most max_rows are: a fixed, seeded random subset
    (sorted), the same at every epoch and in every report. Never the first rows: files are grouped
    (build_dataset.py writes label-1 rows, then human, then viral background), so file order would
    leave whole groups out."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(HELDOUT_SUBSET_SEED).choice(n, size=max_rows, replace=False))


def binders_by_target(rows: Rows | None) -> dict:
    """target -> its label-1 peptides in `rows`, in their order ({} without rows)."""
    out = {}
    for label, target, seq in zip(rows.labels.tolist(), rows.targets, rows.sequences) if rows else ():
        if label == 1:
            out.setdefault(target, []).append(seq)
    return out


VALIDATION_BACKGROUND = 200         # held-out background peptides a run tunes its score against


def validation_split(rows: Rows, train_idx, val_idx) -> dict:
    """What a run tunes itself on (see Tuning): the held-out binders of each target that has training rows,
    each target's training binders, and a fixed subset of the held-out background peptides."""
    trained = binders_by_target(subset_rows(rows, train_idx))
    held = subset_rows(rows, val_idx)
    background = [s for s, label in zip(held.sequences, held.labels.tolist()) if label == 0]
    return {"binders": {t: peps for t, peps in binders_by_target(held).items() if t in trained},
            "trained": trained,
            "background": [background[i] for i in heldout_subset(len(background), VALIDATION_BACKGROUND)]}


def data_stats(rows: Rows, vocab: Vocab) -> dict:
    """What generation and evaluation need from the training data: length counts per label and per
    target, residue composition, and each target's training binders (what its samples' novelty is
    measured against)."""
    by_label = dict(zip(("0", "1"), (counts.tolist() for counts in label_length_counts(rows))))
    by_target = binders_by_target(rows)
    tokens = vocab.encode(rows.sequences)
    counts = letter_counts(tokens, np.zeros(len(tokens)), 1, len(vocab.letters))[0]
    return {"length_counts": by_label,
            "target_length_counts": {t: length_counts(seqs).tolist() for t, seqs in by_target.items()},
            "composition": (counts / counts.sum()).tolist(), "rows": len(rows.sequences), "binders": by_target}


# --- verify-data: the contract, and whether both labels' lengths match ----------------------

MAX_LENGTH_TV = 0.05


def length_distributions_match(c0, c1, max_tv: float = MAX_LENGTH_TV) -> tuple[bool, float]:
    """(total-variation distance < max_tv, the distance) between two length histograms.
    With balanced labels a classifier that sees only the length is right at most (1 + TV) / 2 of the
    time, so 0.05 caps that shortcut at 52.5%. Background drawn from the label-1 distribution differs
    from it by sampling noise only: about 0.005 for 40,000 rows over 8 lengths."""
    p0 = np.asarray(c0, float) / max(np.sum(c0), 1)
    p1 = np.asarray(c1, float) / max(np.sum(c1), 1)
    tv = 0.5 * float(np.abs(p0 - p1).sum())
    return tv < max_tv, tv


def format_length_table(counts_label0, counts_label1) -> str:
    """Side-by-side length counts and fractions of both labels, with their total-variation distance."""
    c0, c1 = np.asarray(counts_label0), np.asarray(counts_label1)
    n0, n1 = max(c0.sum(), 1), max(c1.sum(), 1)
    out = [f"{'length':>6} {'label 0':>9} {'frac':>7} {'label 1':>9} {'frac':>7}"]
    for k in range(len(c0)):
        if c0[k] or c1[k]:
            out.append(f"{k:>6} {c0[k]:>9} {c0[k] / n0:>7.4f} {c1[k]:>9} {c1[k] / n1:>7.4f}")
    ok, tv = length_distributions_match(c0, c1)
    out.append(f"{'total':>6} {c0.sum():>9} {'':>7} {c1.sum():>9}")
    out.append(f"total-variation distance {tv:.4f} ({'below' if ok else 'NOT below'} {MAX_LENGTH_TV})")
    return "\n".join(out)


def verify_data(path) -> tuple[bool, str]:
    """The contract checks training runs, plus whether both labels' length distributions match.
    Returns (everything holds, a readable report). A file that cannot be read as a table (bad header,
    not text, broken gzip) is a failed check, reported like any other; only a path that is not a file
    raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'not a file' if path.exists() else 'file not found'}")
    try:
        rows, problems, _ = check_rows(path)
    except DataError as e:
        return False, f"{e}\ncontract: NOT met (the rows cannot be read, so none were checked)"
    if not rows.sequences:
        problems = problems + [(1, "no data rows")]
    lengths_ok, tv = length_distributions_match(*label_length_counts(rows))
    verdict = [summarize_problems(path, problems) if problems else
               f"contract: all {len(rows.sequences):,} rows hold (labels, targets, letters, lengths 4-20, "
               f"unique rows, no background sequence equal to an interacting one)",
               f"length distributions {'match' if lengths_ok else 'DO NOT match'} (total variation {tv:.4f})"]
    return not problems and lengths_ok, describe_rows(rows) + "\n" + "\n".join(verdict)


# --- a user's peptides (to score or vary): one per line, FASTA, or CSV with a sequence column ---


def peptide_problem(seq: str, letters: str, wildcard: str = "") -> str | None:
    """Why `seq` (uppercase) is not a peptide a model with these residue letters reads, or None.
    `wildcard`: other characters allowed (a template's X)."""
    if not seq:
        return "no sequence"
    bad = re.search(f"[^{letters}{wildcard}]", seq)
    if bad:
        c, where = bad.group(), f"at position {bad.start() + 1}"
        if c in RESIDUES + RARE_RESIDUES:
            return f"'{c}' {where} is not among this model's residue letters ({letters})"
        return f"'{c}' {where} is not a residue letter" + (f" or {wildcard.lower()}" if wildcard else "")
    if not MIN_LEN <= len(seq) <= MAX_LEN:
        return f"length {len(seq)} outside {MIN_LEN}-{MAX_LEN}"
    return None


def peptide_input_name(path=None) -> str:
    """How messages name a peptide input: its path, or standard input (path None or '-')."""
    return "standard input" if path in (None, "-") else str(path)


def iter_peptides(path=None):
    """Peptides from a file (standard input when path is None or '-'), one (line, peptide uppercase) at a
    time in input order, so that a large input is never held whole: one per line, FASTA (a first line
    that starts with '>'), or CSV with a `sequence` column (a .csv name, or a first line naming that
    column). Blank lines are not peptides. Nothing is validated here but the layout: see peptide_problem."""
    name, from_stdin = peptide_input_name(path), path in (None, "-")
    if not from_stdin and not Path(path).exists():
        raise DataError(f"{path}: file not found")
    try:                                                # standard input stays open for the caller
        with contextlib.nullcontext(sys.stdin) if from_stdin else _open_text(Path(path)) as f:
            yield from peptide_entries(name, f)
    except (UnicodeDecodeError, OSError, EOFError) as e:            # OSError: a folder, a broken .gz, ...
        raise DataError(f"{name}: not a readable text file ({e})") from e


def peptide_entries(name: str, lines):
    """The (line, peptide) entries of an input's lines, in the layout its first non-blank line shows."""
    lines, head = iter(lines), []
    for ln in lines:                                    # read up to the line that tells the layout
        head.append(ln)
        if ln.strip():
            break
    first = head[-1].strip() if head else ""
    lines = itertools.chain(head, lines)
    if first.startswith(">"):
        yield from fasta_entries(lines)
    elif name.lower().endswith((".csv", ".csv.gz")) or "sequence" in [h.strip().lower() for h in first.split(",")]:
        yield from csv_entries(name, lines)
    else:
        yield from ((lineno, ln.strip().upper()) for lineno, ln in enumerate(lines, start=1) if ln.strip())


def fasta_entries(lines):
    """FASTA records, each numbered by its header line: a record's sequence may span several lines."""
    header, parts = None, []
    for lineno, ln in enumerate(lines, start=1):
        if ln.strip().startswith(">"):
            if header is not None:
                yield header, "".join(parts)
            header, parts = lineno, []
        elif ln.strip():
            parts.append(ln.strip().upper())
    if header is not None:
        yield header, "".join(parts)


def csv_entries(name: str, lines):
    """The `sequence` column of a CSV's rows, numbered from 2 (the header is row 1); blank rows are skipped."""
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    if "sequence" not in header:
        raise DataError(f"{name}, line 1: no 'sequence' column in the header {','.join(header) or '(empty)'}")
    col = header.index("sequence")
    for lineno, row in enumerate(reader, start=2):
        if any(c.strip() for c in row):
            yield lineno, row[col].strip().upper() if col < len(row) else ""


def read_peptides(path=None) -> tuple[str, list]:
    """iter_peptides' entries as one list: (the input's name, [(line, peptide uppercase)] in input order)."""
    return peptide_input_name(path), list(iter_peptides(path))


# =============================================================================================
# Similarity: a peptide's best BLOSUM62 local alignment to others (nearest neighbour, identity, novelty)
# =============================================================================================
#
# Why this similarity: peptides of one receptor are often variants of each other (point substitutions, a
# few residues more or less at either end, a shared core motif). A local alignment scores the shared core
# and ignores overhangs; BLOSUM62 credits conservative substitutions (I/L/V, D/E, K/R) that exact k-mer or
# Hamming matching would count as misses. Gaps are affine, open -10 / extend -1 (BLAST's default is 11/1):
# in 4-20 residue peptides a gap is rare and costly, so alignments are mostly ungapped runs, as variants of
# one binder are. All of it is numpy, vectorized over (query, reference) pairs: peptides are at most 20
# residues, so the dynamic programme is at most 20 x 20 array steps whatever the number of pairs.

GAP_OPEN = -10          # the first residue of a gap costs GAP_OPEN, each further one GAP_EXTEND
GAP_EXTEND = -1

BLOSUM62_ORDER = "ARNDCQEGHILKMFPSTWYVBZX"
BLOSUM62_ROWS = """
 4 -1 -2 -2  0 -1 -1  0 -2 -1 -1 -1 -1 -2 -1  1  0 -3 -2  0 -2 -1  0
-1  5  0 -2 -3  1  0 -2  0 -3 -2  2 -1 -3 -2 -1 -1 -3 -2 -3 -1  0 -1
-2  0  6  1 -3  0  0  0  1 -3 -3  0 -2 -3 -2  1  0 -4 -2 -3  3  0 -1
-2 -2  1  6 -3  0  2 -1 -1 -3 -4 -1 -3 -3 -1  0 -1 -4 -3 -3  4  1 -1
 0 -3 -3 -3  9 -3 -4 -3 -3 -1 -1 -3 -1 -2 -3 -1 -1 -2 -2 -1 -3 -3 -2
-1  1  0  0 -3  5  2 -2  0 -3 -2  1  0 -3 -1  0 -1 -2 -1 -2  0  3 -1
-1  0  0  2 -4  2  5 -2  0 -3 -3  1 -2 -3 -1  0 -1 -3 -2 -2  1  4 -1
 0 -2  0 -1 -3 -2 -2  6 -2 -4 -4 -2 -3 -3 -2  0 -2 -2 -3 -3 -1 -2 -1
-2  0  1 -1 -3  0  0 -2  8 -3 -3 -1 -2 -1 -2 -1 -2 -2  2 -3  0  0 -1
-1 -3 -3 -3 -1 -3 -3 -4 -3  4  2 -3  1  0 -3 -2 -1 -3 -1  3 -3 -3 -1
-1 -2 -3 -4 -1 -2 -3 -4 -3  2  4 -2  2  0 -3 -2 -1 -2 -1  1 -4 -3 -1
-1  2  0 -1 -3  1  1 -2 -1 -3 -2  5 -1 -3 -1  0 -1 -3 -2 -2  0  1 -1
-1 -1 -2 -3 -1  0 -2 -3 -2  1  2 -1  5  0 -2 -1 -1 -1 -1  1 -3 -1 -1
-2 -3 -3 -3 -2 -3 -3 -3 -1  0  0 -3  0  6 -4 -2 -2  1  3 -1 -3 -3 -1
-1 -2 -2 -1 -3 -1 -1 -2 -2 -3 -3 -1 -2 -4  7 -1 -1 -4 -3 -2 -2 -1 -2
 1 -1  1  0 -1  0  0  0 -1 -2 -2  0 -1 -2 -1  4  1 -3 -2 -2  0  0  0
 0 -1  0 -1 -1 -1 -1 -2 -2 -1 -1 -1 -1 -2 -1  1  5 -2 -2  0 -1 -1  0
-3 -3 -4 -4 -2 -2 -3 -2 -2 -3 -2 -3 -1  1 -4 -3 -2 11  2 -3 -4 -3 -2
-2 -2 -2 -3 -2 -1 -2 -3  2 -1 -1 -2 -1  3 -3 -2 -2  2  7 -1 -3 -2 -1
 0 -3 -3 -3 -1 -2 -2 -3 -3  3  1 -2  1 -1 -2 -2  0 -3 -1  4 -3 -2 -1
-2 -1  3  4 -3  0  1 -1  0 -3 -4  0 -3 -3 -2  0 -1 -4 -3 -3  4  1 -1
-1  0  0  1 -3  3  4 -2  0 -3 -3  1 -1 -3 -1  0 -1 -3 -2 -2  1  4 -1
 0 -1 -1 -1 -2 -1 -1 -1 -1 -1 -1 -1 -1 -1 -2  0  0 -2 -1 -1 -1 -1 -1
"""
ALIGN_PAD = len(BLOSUM62_ORDER)               # the index of padding (and of any unknown letter)
ALIGN_NEG = -10_000                           # a PAD pairing: no local alignment crosses it

BLOSUM62 = np.full((ALIGN_PAD + 1, ALIGN_PAD + 1), ALIGN_NEG, dtype=np.int32)
BLOSUM62[:ALIGN_PAD, :ALIGN_PAD] = np.array(BLOSUM62_ROWS.split(), dtype=np.int32).reshape(ALIGN_PAD, ALIGN_PAD)
BLOSUM62_INDEX = np.full(128, BLOSUM62_ORDER.index("X"), dtype=np.int64)   # U, O, J, ...: scored as X
for _i, _c in enumerate(BLOSUM62_ORDER):
    BLOSUM62_INDEX[ord(_c)] = _i


def blosum62(a: str, b: str) -> int:
    """The BLOSUM62 score of two residue letters (any non-standard letter scores as X)."""
    return int(BLOSUM62[BLOSUM62_INDEX[ord(a.upper())], BLOSUM62_INDEX[ord(b.upper())]])


def blosum62_indices(seqs) -> np.ndarray:
    """(N, max length) BLOSUM62 indices, padded with the PAD index."""
    width = max([len(s) for s in seqs] + [1])
    out = np.full((len(seqs), width), ALIGN_PAD, dtype=np.int64)
    for i, s in enumerate(seqs):
        if s:
            out[i, :len(s)] = BLOSUM62_INDEX[np.frombuffer(s.upper().encode("ascii"), dtype=np.uint8)]
    return out


def align_pairs(a, b, gap_open: int = GAP_OPEN, gap_extend: int = GAP_EXTEND,
                with_identities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Smith-Waterman (Gotoh affine gaps) of the pairs (a[k], b[k]), all at once. Returns the best local
    alignment score of each pair (P,) and, with_identities, the number of identical aligned residues in
    that alignment (P,; among equal-scoring alignments the one the recursion keeps: diagonal first,
    then a gap in b, then in a), else None."""
    A, B = blosum62_indices(list(a)), blosum62_indices(list(b))
    P, n, m = len(A), A.shape[1], B.shape[1]
    S = BLOSUM62[A.T[:, None, :], B.T[None, :, :]]              # (n, m, P) substitution scores
    same = ((A.T[:, None, :] == B.T[None, :, :]) & (A.T[:, None, :] != ALIGN_PAD)).astype(np.int32)
    zero = np.zeros(P, dtype=np.int32)
    neg = np.full(P, -10**8, dtype=np.int32)
    H_prev, I_prev = [zero] * (m + 1), [zero] * (m + 1)    # row i-1: best score, identities on its path
    E_prev, EI_prev = [neg] * (m + 1), [zero] * (m + 1)    # row i-1: ending in a gap in b (vertical)
    best, best_id = zero.copy(), zero.copy()
    for i in range(n):
        H_row, I_row, E_row, EI_row = [zero], [zero], [neg], [zero]
        F, FI = neg, zero                                   # ending in a gap in a (horizontal), this row
        for j in range(1, m + 1):
            open_e, ext_e = H_prev[j] + gap_open, E_prev[j] + gap_extend     # vertical gap: open or extend
            E = np.maximum(open_e, ext_e)
            open_f, ext_f = H_row[j - 1] + gap_open, F + gap_extend          # horizontal gap, this row
            F = np.maximum(open_f, ext_f)
            diag = H_prev[j - 1] + S[i, j - 1]
            H = np.maximum(np.maximum(diag, 0), np.maximum(E, F))
            H_row.append(H)
            E_row.append(E)
            if not with_identities:
                np.maximum(best, H, out=best)
            else:
                EI = np.where(open_e >= ext_e, I_prev[j], EI_prev[j])
                FI = np.where(open_f >= ext_f, I_row[j - 1], FI)
                I = np.where(H <= 0, 0, np.where(H == diag, I_prev[j - 1] + same[i, j - 1],
                                                 np.where(H == E, EI, FI)))
                I_row.append(I)
                EI_row.append(EI)
                better = H > best
                best, best_id = np.where(better, H, best), np.where(better, I, best_id)
        H_prev, I_prev, E_prev, EI_prev = H_row, I_row, E_row, EI_row
    return best, (best_id if with_identities else None)


def local_alignment_scores(queries, references, chunk: int = 50_000, with_identities: bool = False):
    """(Q, R) best BLOSUM62 local alignment score of every query against every reference (affine gaps
    GAP_OPEN / GAP_EXTEND). With with_identities, also (Q, R) identical aligned residues."""
    queries, references = list(queries), list(references)
    Q, R = len(queries), len(references)
    scores = np.zeros((Q, R), dtype=np.int64)
    ids = np.zeros((Q, R), dtype=np.int64)
    if Q == 0 or R == 0:
        return (scores, ids) if with_identities else scores
    qi, ri = np.divmod(np.arange(Q * R), R)
    for start in range(0, Q * R, chunk):
        q, r = qi[start:start + chunk], ri[start:start + chunk]
        s, k = align_pairs([queries[x] for x in q], [references[x] for x in r], with_identities=with_identities)
        scores[q, r] = s
        if with_identities:
            ids[q, r] = k
    return (scores, ids) if with_identities else scores


def self_scores(seqs) -> np.ndarray:
    """Each peptide's alignment score with itself (N,): the sum of its diagonal BLOSUM62 entries."""
    idx = blosum62_indices(list(seqs))
    return np.where(idx != ALIGN_PAD, BLOSUM62[idx, idx], 0).sum(1)


def nearest_neighbour_scores(queries, references, normalize: bool = False) -> np.ndarray:
    """(Q,) each query's best alignment score against any reference; with normalize, the best of
    score / sqrt(self-score of query * self-score of reference), in [0, 1] (1: identical)."""
    s = local_alignment_scores(queries, references).astype(float)
    if normalize:
        s = s / np.sqrt(np.outer(self_scores(queries), self_scores(references)).clip(min=1))
    return s.max(1) if s.shape[1] else np.zeros(len(s))


def best_identity(queries, references) -> np.ndarray:
    """(Q,) each query's identity to its nearest reference: the identical aligned residues of the best
    local alignment divided by the query's length, maximised over references (1: the query occurs
    verbatim inside a reference). A sample under 0.8 to every training peptide counts as novel."""
    queries = list(queries)
    if not references:
        return np.zeros(len(queries))
    _, ids = local_alignment_scores(queries, references, with_identities=True)
    lengths = np.array([max(len(q), 1) for q in queries], dtype=float)
    return ids.max(1) / lengths


NOVEL_IDENTITY = 0.8            # a peptide under this identity to every training peptide of its target is novel


def novel_peptides(peptides: list, training: list, n: int | None = None) -> tuple[list, float]:
    """The first n of `peptides` that are novel (under NOVEL_IDENTITY to every peptide of `training`), and the
    fraction of all of them that is: peptides compared at matched novelty."""
    novel = best_identity(peptides, training) < NOVEL_IDENTITY if training else np.ones(len(peptides), bool)
    return [p for p, ok in zip(peptides, novel) if ok][:n], float(novel.mean()) if len(peptides) else 0.0


# --- known binders mutated by hand: a baseline, and proposals the model ranks (see rank_candidates) ---

def standard_composition(comp) -> np.ndarray:
    """A composition over the vocabulary's letters cut to RESIDUES (the letters samples use), renormalized."""
    comp = np.asarray(comp, float)[:len(RESIDUES)]
    return comp / comp.sum()


def substitution_probs(comp) -> np.ndarray:
    """(20, 20) over RESIDUES: P(b | a), the chance that a hand-made substitution turns residue a into b (never a
    itself), proportional to comp[b] * 2^(BLOSUM62[a, b] / 2): BLOSUM62 scores are half-bit log-odds of a and b
    aligned in related proteins over chance, so this is the matrix's own model of a conservative substitution."""
    index = BLOSUM62_INDEX[np.frombuffer(RESIDUES.encode(), dtype=np.uint8)]
    odds = 2.0 ** (BLOSUM62[index[:, None], index[None, :]] / 2) * standard_composition(comp)[None, :]
    np.fill_diagonal(odds, 0)
    return odds / odds.sum(1, keepdims=True)


def mutated_binders(training: list, n: int, substitutions, rng) -> list:
    """n variants of known binders, made as a biologist would by hand: a training peptide of the target picked
    at random, then substitutions (substitution_probs) at positions not changed yet, one a round, until the
    variant is novel (under NOVEL_IDENTITY to every training peptide): the baseline a generator must beat at
    matched novelty."""
    index = {c: i for i, c in enumerate(RESIDUES)}
    parents = [training[i] for i in rng.integers(0, len(training), n)]
    variants = [list(p) for p in parents]
    untouched = [list(rng.permutation(len(v))) for v in variants]
    todo = list(range(n))
    while todo:
        for i in todo:
            spots = untouched[i] or [int(rng.integers(len(variants[i])))]
            pos = spots.pop()
            old = variants[i][pos]
            probs = substitutions[index[old]] if old in index else np.full(len(RESIDUES), 1 / len(RESIDUES))
            variants[i][pos] = RESIDUES[rng.choice(len(RESIDUES), p=probs)]
        made = ["".join(variants[i]) for i in todo]
        # still this close to its own parent: not novel, and no need to align it to every training peptide
        _, same = align_pairs(made, [parents[i] for i in todo])
        near_parent = same / np.array([len(v) for v in made]) >= NOVEL_IDENTITY
        away = [k for k, near in enumerate(near_parent) if not near]
        near_any = near_parent.copy()
        near_any[away] = best_identity([made[k] for k in away], training) >= NOVEL_IDENTITY
        todo = [i for i, near in zip(todo, near_any) if near]
    return ["".join(v) for v in variants]


def auroc_wins(pos, neg) -> np.ndarray:
    """(n_pos, n_neg): 1 where a positive scores above a negative, 0.5 on a tie, 0 below; its mean is the AUROC."""
    diff = np.asarray(pos, dtype=float)[:, None] - np.asarray(neg, dtype=float)[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def specificity(made: dict, held: dict) -> dict:
    """target -> the chance that a peptide made for the target aligns better to the target's held-out binders
    (its best BLOSUM62 local-alignment score to them) than a peptide made for another target: the AUROC of
    the target's peptides against all the other targets' (0.5: the peptides know nothing of their target).
    `made`: target -> peptides made for it; `held`: target -> its held-out binders; targets with both count,
    and there must be two of them."""
    targets = [t for t in made if made[t] and held.get(t)]
    if len(targets) < 2:
        return {}
    pool = [p for t in targets for p in made[t]]
    owner = np.repeat(np.arange(len(targets)), [len(made[t]) for t in targets])
    columns = np.cumsum([0] + [len(held[t]) for t in targets])
    scores = local_alignment_scores(pool, [b for t in targets for b in held[t]])      # (pool, all held-out binders)
    out = {}
    for k, t in enumerate(targets):
        near = scores[:, columns[k]:columns[k + 1]].max(1)
        out[t] = float(auroc_wins(near[owner == k], near[owner != k]).mean())
    return out


# =============================================================================================
# Model: an x0-predicting bidirectional transformer conditioned on step, label and target
# =============================================================================================


class Residues:
    """Where the residues sit in a padded batch (B, L), so that the position-wise layers (projections,
    MLPs, LayerNorms, the head: nearly all the FLOPs) can run on residue rows only. Short peptides are
    mostly PAD: on lengths 4-20 about 40% of a padded batch. Only attention needs the (B, L) grid.
    Packing has a data-dependent size (a host sync on a GPU, a recompile under torch.compile), so it is
    used on the CPU; on a GPU every tensor keeps its static padded shape."""

    def __init__(self, pad_mask, packed: bool):
        self.shape = pad_mask.shape
        self.index = pad_mask.flatten().nonzero().squeeze(1) if packed else None    # (N,) flat positions

    def positions(self, device):                        # each row's place in its peptide: (N,) or (B, L)
        if self.index is None:
            return torch.arange(self.shape[1], device=device).expand(self.shape)
        return self.index % self.shape[1]

    def pack(self, h):                                  # (B, L, D) -> (N, D) residue rows
        return h if self.index is None else h.flatten(0, 1).index_select(0, self.index)

    def unpack(self, h):                                # (N, D) -> (B, L, D), zeros at PAD
        if self.index is None:
            return h
        grid = h.new_zeros(self.shape[0] * self.shape[1], h.shape[-1]).index_copy_(0, self.index, h)
        return grid.view(*self.shape, h.shape[-1])


def rotary_table(head_dim: int, length: int = MAX_LEN):
    """(cos, sin) of the rotary position embeddings' angles (Su et al. 2021) at positions 0..length-1, each
    (length, head_dim / 2): rotating each pair of query and key features by an angle proportional to the
    position makes their dot product depend on the offset between two residues only, so a motif learned
    at one offset is recognised at every other. Pair i turns by position * 10000^(-2i / head_dim). The
    values come from torch.polar, as the complex form's e^(i angle) did, so CPU runs keep their weights."""
    freqs = 10_000 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(length).float()[:, None] * freqs
    turn = torch.polar(torch.ones_like(angles), angles)
    return turn.real.contiguous(), turn.imag.contiguous()


def rotate(x, cos, sin):
    """x (..., head_dim) with each pair of neighbouring features (2i, 2i + 1) turned by the angle whose cos
    and sin are given (broadcast over (..., head_dim / 2)), in fp32: (x1 cos - x2 sin, x1 sin + x2 cos),
    the complex product (x1 + i x2) e^(i angle) in real arithmetic, which fuses and graphs like any other."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


def rotate_complex(x, turn):
    """rotate() as one complex product: x's pairs (x1 + i x2) times turn = cos + i sin (complex, broadcast
    over (..., head_dim / 2)). The same values, but on the CPU one vectorised kernel forward and one backward
    against rotate()'s six elementwise products and sums, a stack and their backward: 3-5x cheaper, 5-12%
    of a training step. CUDA graphs and compilers want real tensors, so the GPU keeps rotate()."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * turn).flatten(-2).type_as(x)


def rotary_turn(cos, sin, positions, device: torch.device):
    """Each row's rotary turn at `positions` from the (cos, sin) tables: complex on the CPU (rotate_complex),
    the pair (cos, sin) elsewhere (rotate)."""
    cos, sin = cos[positions], sin[positions]
    return torch.complex(cos, sin) if device.type == "cpu" else (cos, sin)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask, res: Residues, turn=None):
        """x: residue rows (N, D) or (B, L, D); attn_mask: (B, 1, 1, L), True = attend; turn: each row's
        rotary turn (rotary_turn: complex, or a (cos, sin) pair), each (N or B, L, head_dim / 2), or None for
        no rotary attention."""
        B, L = res.shape
        D = x.shape[-1]
        qk, v = self.qkv(x).split([2 * D, D], -1)     # backward: one cat (two slices: two zero-fills and a sum)
        if turn is not None:                            # rotated on residue rows, before the grid
            heads = qk.unflatten(-1, (2, self.n_heads, -1))
            if torch.is_tensor(turn):
                qk = rotate_complex(heads, turn[..., None, None, :]).flatten(-3)
            else:
                qk = rotate(heads, *(part[..., None, None, :] for part in turn)).flatten(-3)
        # unbind before transposing: the gradients of q and k stack into the (B, L, 2, H, D / H) layout of
        # their grid, so its view needs no copy in the backward pass
        q, k = res.unpack(qk).view(B, L, 2, self.n_heads, D // self.n_heads).unbind(2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)     # (B, H, L, D / H)
        v = res.unpack(v).view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)    # (B, H, L, D / H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(res.pack(y.transpose(1, 2).reshape(B, L, D)))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x, attn_mask, res: Residues, turn=None):
        x = x + self.attn(self.ln1(x), attn_mask, res, turn)
        return x + self.mlp(self.ln2(x))


def timestep_embedding(t, dim: int):
    """Sinusoidal embedding of integer steps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ReferenceEncoder(nn.Module):
    """A target's known binders, refs (B, R, L) tokens, as one vector (B, dim) that joins the condition. Each
    binder's residues are embedded (the model's own letter and position embeddings); a width-3 convolution
    reads each run of three residues (a motif is a few residues in a row); the max over a binder's positions
    says which stretches it holds; the mean over the binders given pools them. A row given none (all PAD)
    gets 0: the condition of the id-only model."""

    def __init__(self, dim: int, n_heads: int = 1, attention: bool = False):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.out = nn.Linear(dim, dim, bias=False)
        self.attention = ReferenceAttention(dim, n_heads) if attention else None

    def forward(self, refs, tok_emb: nn.Embedding, pos_emb: nn.Embedding, packed: bool = False):
        """(the pooled vector (B, dim), the memory ReferenceAttention reads, or None without attention)."""
        B, R, L = refs.shape
        flat = refs.reshape(B * R, L)
        if packed:      # the CPU: each distinct binder once (a batch repeats them, and background rows read none)
            flat, inverse = torch.unique(flat, dim=0, return_inverse=True)
        is_residue = flat != PAD                                    # (N, L)
        h = (tok_emb(flat) + pos_emb.weight[:L][None]) * is_residue[..., None]
        h = F.gelu(self.conv(h.transpose(1, 2))).transpose(1, 2)    # (N, L, dim)
        memory = (h, is_residue, inverse if packed else None, R) if self.attention is not None else None
        h = h.masked_fill(~is_residue[..., None], -float("inf")).amax(1)
        given = is_residue.any(1)                                   # (N,)
        h = torch.where(given[:, None], h, 0.0)
        if packed:
            h, given = h[inverse], given[inverse]
        pooled = h.view(B, R, -1).sum(1) / given.view(B, R).sum(1, keepdim=True).clamp_min(1)
        return self.out(pooled), memory


class ReferenceAttention(nn.Module):
    """Each residue of the peptide attends to every residue of its row's known binders (their convolution
    features from ReferenceEncoder), plus a learned empty slot for a row given none: the model can copy
    what it reads, a motif at any offset, rather than a summary of it."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.empty = nn.Parameter(torch.zeros(1, 1, 2 * dim))

    def forward(self, x, memory, res: Residues):
        feats, is_residue, inverse, R = memory              # feats (N, L_ref, D): each distinct binder on the CPU
        kv = self.kv(feats)
        if inverse is not None:
            kv, is_residue = kv[inverse], is_residue[inverse]
        B, L = res.shape
        D, H = x.shape[-1], self.n_heads
        kv = torch.cat([self.empty.expand(B, 1, -1), kv.reshape(B, -1, 2 * D)], 1)        # (B, 1 + R L_ref, 2D)
        keep = torch.cat([is_residue.new_ones(B, 1), is_residue.reshape(B, -1)], 1)
        k, v = (part.transpose(1, 2) for part in kv.view(B, kv.shape[1], 2, H, D // H).unbind(2))
        q = res.unpack(self.q(x)).view(B, L, H, D // H).transpose(1, 2)                   # (B, H, L, D / H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.proj(res.pack(y.transpose(1, 2).reshape(B, L, D)))


class X0Transformer(nn.Module):
    """Predicts logits of x0 over the K residue letters (B, L, K) from (x_t, t, label, target[, refs]).
    The condition (step + label + target + the target's known binders, with cfg.references) is added to
    every position's embedding. Where a residue sits
    enters twice: rotary attention sees the offset between two residues (cfg.rotary), and each residue
    embeds its distance from the N-terminus and, with cfg.termini, from the C-terminus, which is where
    some motifs are anchored (a PDZ ligand ends in its last residue)."""

    def __init__(self, cfg: Config, vocab_size: int, num_targets: int):
        super().__init__()
        self.dim, self.head_dim, self.rotary = cfg.dim, cfg.dim // cfg.n_heads, cfg.rotary
        self.tok_emb = nn.Embedding(vocab_size + (cfg.noise == "absorbing"), cfg.dim)   # + MASK, last
        self.pos_emb = nn.Embedding(MAX_LEN, cfg.dim)                # distance from the N-terminus
        self.cterm_emb = nn.Embedding(MAX_LEN, cfg.dim) if cfg.termini else None   # ... from the C-terminus
        self.label_emb = nn.Embedding(3, cfg.dim)                   # background, interacting, unknown
        self.target_emb = nn.Embedding(num_targets, cfg.dim)        # 0 = unknown / none
        self.ref_encoder = (ReferenceEncoder(cfg.dim, cfg.n_heads, cfg.reference_attention) if cfg.references
                            else None)
        self.ref_ln = nn.LayerNorm(cfg.dim) if cfg.references and cfg.reference_attention else None
        self.time_mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, vocab_size - 1)              # residue letters only: PAD is never predicted
        self.pack_residues = None                                   # None: on the CPU only (see Residues)
        cos, sin = rotary_table(self.head_dim)                      # fixed: not saved in checkpoints
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, xt, t, label, target_id, refs=None):
        pad_mask = xt != PAD                                        # (B, L)
        packed = xt.device.type == "cpu" if self.pack_residues is None else self.pack_residues
        res = Residues(pad_mask, packed)
        cond = self.time_mlp(timestep_embedding(t, self.dim)) + self.label_emb(label) + self.target_emb(target_id)
        memory = None
        if self.ref_encoder is not None and refs is not None:       # refs (B, R, L): the target's known binders
            pooled, memory = self.ref_encoder(refs, self.tok_emb, self.pos_emb, packed)
            cond = cond + pooled
        pos = torch.arange(xt.shape[1], device=xt.device)
        h = self.tok_emb(xt) + self.pos_emb(pos)[None] + cond[:, None, :]
        if self.cterm_emb is not None:                              # residues after this one: (B, L)
            to_cterm = (pad_mask.sum(1, keepdim=True) - 1 - pos[None]).clamp_min(0)
            h = h + self.cterm_emb(to_cterm)
        h = res.pack(h)
        turn = None
        if self.rotary:
            turn = rotary_turn(self.rotary_cos, self.rotary_sin, res.positions(xt.device), xt.device)
        attn_mask = pad_mask[:, None, None, :]                      # residues never attend to PAD
        for i, block in enumerate(self.blocks):
            h = block(h, attn_mask, res, turn)
            if i == 0 and memory is not None:                       # after one layer of context: read the binders
                h = h + self.ref_encoder.attention(self.ref_ln(h), memory, res)
        return res.unpack(self.head(self.ln_f(h)))                  # (B, L, K); PAD positions hold 0


def build_model(cfg: Config, vocab: Vocab, device="cpu") -> X0Transformer:
    """A new model for this config and vocabulary, initialised from cfg.seed (the global RNG is left as it
    was: a run seeds its own stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = X0Transformer(cfg, vocab.size, vocab.num_targets)
    return model.to(device)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =============================================================================================
# Diffusion: D3PM with uniform transitions over residue letters and a cosine schedule
# =============================================================================================


class D3PM:
    """Forward process q(x_t | x_{t-1}) = Cat(x_t; Q_t[x_{t-1}]) on residue indices 0..K-1 (token - 1).
    noise "uniform" (the D3PM paper's): Q_t = (1 - beta_t) I + beta_t / K, and x_T is uniform over the letters.
    noise "absorbing" (masked diffusion, as MDLM): a residue turns into a MASK state (index K, token K + 1)
    with probability beta_t and stays there; x_T is all MASK, and a residue still unmasked is known to be x0's.
    S is the number of states (K, or K + 1 with MASK). Index 0 of the stacked matrices is the identity, so
    Qbar[t - 1] is defined for every t in 1..T."""

    def __init__(self, num_letters: int, n_steps: int, device="cpu", noise: str = "uniform"):
        K, T = num_letters, n_steps
        S = K + (noise == "absorbing")
        self.K, self.S, self.T, self.noise = K, S, T, noise
        s = 0.008                                       # cosine schedule (Nichol & Dhariwal), alpha_bar(T) = 0
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(0.0, 1.0)
        eye, jump = torch.eye(S, dtype=torch.float64), torch.full((S, S), 1.0 / K, dtype=torch.float64)
        if noise == "absorbing":                        # where a state goes when it moves: MASK
            jump = torch.zeros((S, S), dtype=torch.float64)
            jump[:, K] = 1.0
        Q = [eye] + [(1 - b) * eye + b * jump for b in betas]
        Qbar = [eye]
        for t in range(1, T + 1):
            Qbar.append(Qbar[-1] @ Q[t])
        self.betas = betas.float().to(device)
        self.Q = torch.stack(Q).float().to(device)          # (T+1, S, S)
        self.Qbar = torch.stack(Qbar).float().to(device)    # (T+1, S, S)
        self.stationary = jump[0].float().to(device)        # (S,) q(x_T), whatever x0 was

    def prior_sample(self, n: int, width: int, generator=None):
        """x_T residue indices (n, width): uniform letters, or all MASK."""
        dev = self.Q.device
        if self.noise == "absorbing":
            return torch.full((n, width), self.K, dtype=torch.long, device=dev)
        return torch.randint(0, self.K, (n, width), device=dev, generator=generator)

    def q_probs(self, x0r, t):
        """q(x_t | x0) as probabilities (B, L, S) for residue indices x0r (B, L) and steps t (B,)."""
        return self.Qbar[t[:, None], x0r]

    def q_sample(self, x0, t, generator=None, uniforms=None):
        """x_t ~ q(x_t | x0) for tokens x0 (B, L): residues are noised, PAD stays PAD.
        Returns (xt tokens, xt residue indices), both (B, L). See sample_categorical for `uniforms`."""
        x0r = (x0.long() - 1).clamp_min(0)                  # residue index; PAD positions hold 0, masked below
        xtr = sample_categorical(self.q_probs(x0r, t), generator, uniforms)
        return torch.where(x0 != PAD, xtr + 1, PAD), xtr

    def posterior(self, xtr, t, x0_probs):
        """p(x_{t-1} | x_t) = sum_a q(x_{t-1} | x_t, x0=a) p(a | x_t) for the model's x0 probabilities
        (B, L, K). Trained with ce, p(a | x_t) is the posterior of x0, which already holds the likelihood
        q(x_t | a); so each term is the true posterior, q(x_{t-1}=j | x_t, a) = Q_t[j, x_t] Qbar_{t-1}[a, j]
        / Qbar_t[a, x_t], not the joint q(x_{t-1}, x_t | a) of D3PM's vb-trained form, which would count
        the likelihood twice (a loose bound, and a sampler that clings to x_t). At t = 1 this is p(x0 | x_1)."""
        likelihood = self.Qbar[t[:, None], :, xtr][..., :self.K]          # Qbar_t[a, x_t] for letters a
        # a letter that cannot reach x_t (absorbing noise: any but x_t itself when x_t is unmasked) gets no weight
        weights = x0_probs / likelihood.clamp_min(1e-30) * (likelihood > 0)   # p(a | x_t) / Qbar_t[a, x_t]
        return self._bayes(xtr, t, torch.einsum("blk,bkj->blj", weights, self.Qbar[t - 1, :self.K]))

    def true_posterior(self, xtr, t, x0r):
        """q(x_{t-1} | x_t, x0) for known residues x0r (B, L): posterior() of a one-hot x0, as a gather."""
        return self._bayes(xtr, t, self.Qbar[t[:, None] - 1, x0r])

    def _bayes(self, xtr, t, prev_probs):
        """q(x_{t-1} = j | x_t, .) ∝ q(x_t | x_{t-1} = j) * prev_probs[..., j], prev_probs (B, L, S)."""
        unnorm = self.Q[t[:, None], :, xtr] * prev_probs                   # Q[t][j, x_t] for every j
        return unnorm / unnorm.sum(-1, keepdim=True).clamp_min(1e-30)

    def losses(self, model, x0, label, target_id, generator=None, part=slice(None), precision: str = "auto",
               refs=None):
        """Training losses for a batch of clean tokens x0 (B, L): ce of the x0 prediction and vb, the KL
        between true and predicted posteriors, both averaged over residue positions (PAD excluded). refs
        (B, R, L): each row's target's known binders (None: the model reads the target id alone).
        `part` picks the rows this process scores: data-parallel ranks draw the noise of the whole batch
        and divide by its residue count, so their summed gradients equal a single process's. `precision`: the
        model's forward pass (autocast)."""
        n = (x0 != PAD).sum().clamp_min(1)
        t = torch.randint(1, self.T + 1, (x0.shape[0],), device=x0.device, generator=generator)
        xt, xtr = self.q_sample(x0, t, generator)
        x0, xt, xtr, t, label, target_id = (v[part] for v in (x0, xt, xtr, t, label, target_id))
        refs = None if refs is None else refs[part]
        pad_mask, x0r = x0 != PAD, (x0.long() - 1).clamp_min(0)
        with autocast(x0.device, precision):            # (a model that reads no references takes four inputs)
            logits = model(xt, t, label, target_id) if refs is None else model(xt, t, label, target_id, refs)
        ce, vb = self.ce_and_vb(logits.float(), x0r, xtr, t)   # (B, L, K) logits; the loss math in fp32
        return (ce * pad_mask).sum() / n, (vb * pad_mask).sum() / n

    def ce_and_vb(self, logits, x0r, xtr, t):
        """Per-position ce (-log p(x0 | x_t)) and vb (KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))), (B, L) each.
        At t = 1 the true posterior is x0 itself, so vb is the reconstruction term -log p(x0 | x_1)."""
        ce = F.cross_entropy(logits.flatten(0, 1), x0r.flatten(), reduction="none").view_as(x0r)
        q_post = self.true_posterior(xtr, t, x0r)
        p_post = self.posterior(xtr, t, logits.softmax(-1))
        vb = (torch.special.xlogy(q_post, q_post) - q_post * p_post.clamp_min(1e-30).log()).sum(-1)
        return ce, vb


@torch.no_grad()
def heldout_bound_nats(model, diffusion: D3PM, x0, label, target_id, generator=None, batch_size: int = 512,
                       n_draws: int = 1, seed: int | None = None, refs=None):
    """The D3PM variational bound -log p(x0 | length) >= ... per sequence, in nats, (N,): the prior term
    KL(q(x_T | x0) || q(x_T)), the KL terms of every step t = 2..T and the reconstruction term
    -log p(x0 | x_1) (the t = 1 term of ce_and_vb), each with x_t ~ q(x_t | x0), as d3pm's calc_bpd_loop.
    With n_draws > 1 the step terms are averaged over that many draws of the x_t. With a seed the x_t come
    from peptide_noise instead of `generator`: a sequence's bound then depends on nothing but the seed
    and the sequence (not on the other rows or their order), and two calls under other labels or
    targets see the same x_t, so the noise common to both cancels in their difference. The model runs in
    full precision (full_precision), so a bound does not move with the batch on a GPU either. refs (N, R, L):
    each peptide's target's known binders, for a model that reads them (None: the target id alone)."""
    d, dev = diffusion, next(model.parameters()).device
    out = []
    for start in range(0, x0.shape[0], batch_size):
        xb = x0[start:start + batch_size].to(dev).long()
        if seed is not None:        # peptide_noise does not depend on the width: skip the all-PAD columns
            xb = xb[:, :max(1, int((xb != PAD).sum(1).max()))]
        lb, tb = label[start:start + batch_size].to(dev), target_id[start:start + batch_size].to(dev)
        rb = None if refs is None else refs[start:start + batch_size].to(dev).long()
        pad_mask, x0r, B = xb != PAD, (xb - 1).clamp_min(0), xb.shape[0]
        q_T = d.q_probs(x0r, torch.full((B,), d.T, device=dev))
        kl_T = torch.special.xlogy(q_T, q_T) - torch.special.xlogy(q_T, d.stationary)    # KL(q(x_T | x0) || q(x_T))
        prior = (kl_T.sum(-1) * pad_mask).sum(-1)
        steps = torch.zeros(B, device=dev)
        for draw in range(n_draws):
            noise = peptide_noise(xb, seed, draw, d.T, d.S).to(dev) if seed is not None else None
            for t in range(1, d.T + 1):
                t_b = torch.full((B,), t, device=dev)
                xt, xtr = d.q_sample(xb, t_b, generator, None if noise is None else noise[:, t - 1])
                with full_precision(dev):
                    logits = model(xt, t_b, lb, tb, rb)
                _, vb = d.ce_and_vb(logits.float(), x0r, xtr, t_b)
                steps += (vb * pad_mask).sum(-1)
        out.append((prior + steps / n_draws).cpu())
    return torch.cat(out)


def peptide_noise(x0, seed: int, draw: int, n_steps: int, num_states: int):
    """Uniforms (B, n_steps, L, S) for drawing x_1..x_T of each row of x0 (B, L), from a generator seeded
    by (seed, draw, the row's residues): a peptide gets the same noise in any batch, at any row, any width."""
    salt, g = zlib.crc32(f"{seed}/{draw}".encode()), torch.Generator()
    keys = [zlib.crc32(r[r != PAD].tobytes(), salt) for r in x0.to("cpu", torch.uint8).numpy()]
    noise = [torch.rand((n_steps, MAX_LEN, num_states), generator=g.manual_seed(k)) for k in keys]
    return torch.stack(noise)[:, :, :x0.shape[1]]


def sample_categorical(probs, generator=None, uniforms=None):
    """One draw per row of probs (..., K) by the Gumbel-max trick: no host sync, any batch shape.
    `uniforms` (probs' shape, in [0, 1)) replaces the fresh draws: noise fixed in advance."""
    u = torch.rand(probs.shape, device=probs.device, generator=generator) if uniforms is None else uniforms
    u = u.clamp(1e-20, 1.0)
    return (probs.clamp_min(1e-30).log() - (-u.log()).log()).argmax(-1)


# =============================================================================================
# Run folder: checkpoints, the model file, resume policy, the convergence plot
# =============================================================================================


MODEL_FILE = "model.pt"             # what generation needs: weights, vocabulary, config, data stats


def run_dir_for(run_name: str, checkpoint_dir="checkpoints") -> Path:
    return Path(checkpoint_dir) / run_name


def load_checkpoint(path) -> dict:
    """Load a checkpoint safely (weights_only: a downloaded file cannot run code) and check its format.
    A file that is refused or unreadable is a DataError saying what the file is and what to do."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():             # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(unreadable_checkpoint_message(path, e)) from None   # torch's advice would say: unsafe load
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        held = f"a dict with keys {', '.join(map(str, list(ckpt)[:5]))}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DataError(f"{path}: not a Mimir checkpoint: a PyTorch file holding {held}, not the {CHECKPOINT_FORMAT} "
                        f"record of a training run. Point to a run's last.pt or best.pt.")
    return ckpt


def unreadable_checkpoint_message(path, error: Exception) -> str:
    """What a checkpoint that torch.load(weights_only=True) refused or could not read is, in Mimir's words.
    weights_only refuses any pickled object that is not a tensor or plain data: loading one could run code."""
    refused = re.search(r"GLOBAL ([\w.]+)|Unsupported class ([\w.]+)|reduce for ([\w.]+)", str(error))
    if refused:
        name = next(g for g in refused.groups() if g)
        return (f"{path}: not a readable Mimir checkpoint: it holds a pickled Python object ({name}) that would run "
                f"code when loaded. Mimir refused to run code from it (checkpoints load as tensors and plain data "
                f"only), so nothing in the file ran. Mimir never writes such objects: this file was made elsewhere "
                f"or altered. Use a last.pt or best.pt written by Mimir, from a source you trust, or train again.")
    reason = {EOFError: "the file is empty or ends early", IsADirectoryError: "it is a directory"}.get(
        type(error), "damaged, truncated, or not a PyTorch file")
    return (f"{path}: not a readable Mimir checkpoint ({reason}); nothing was loaded or run from it. Replace it "
            f"with an intact copy (the run directory's other checkpoint, a backup), or train again.")


def sampling_weights(ckpt: dict) -> dict:
    """The weights to sample with, from a checkpoint or model file (the one place that chooses them):
    the moving average when the run keeps one."""
    return ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]


RUN_FILES = ("best.pt", "last.pt", MODEL_FILE)   # a folder holding one of these is a run to sample from


def checkpoint_path(run_dir, checkpoint: str = "best") -> Path:
    """The file a run samples from: best.pt, else last.pt, else model.pt (a run downloaded without its
    checkpoints); or last.pt when asked for."""
    run_dir = Path(run_dir)
    if checkpoint != "best":
        return run_dir / f"{checkpoint}.pt"
    return next((run_dir / name for name in RUN_FILES if (run_dir / name).exists()),
                run_dir / "best.pt")


def runs_in(folder) -> list:
    """The names of the runs in a folder: its subfolders that hold a checkpoint or a model file."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and any((d / f).is_file() for f in RUN_FILES))


def no_run_message(run_dir) -> str:
    """What is wrong with a run directory that holds no checkpoint, and which runs its folder does hold."""
    run_dir, folder = Path(run_dir), Path(run_dir).parent
    runs = runs_in(folder)
    if run_dir.is_dir():
        problem = f"{run_dir} holds no checkpoint yet ({', '.join(RUN_FILES)}): its training saved none"
    else:
        problem = f"there is no run named '{run_dir.name}' in {folder}"
    if runs:
        more = f" and {len(runs) - 20} more" if len(runs) > 20 else ""
        return f"{problem}; the runs there: {', '.join(runs[:20])}{more}"
    return f"{problem}; {folder} {'holds no runs' if folder.is_dir() else 'does not exist'}"


def read_data_stats(run_dir) -> dict:
    """The run's data_stats.json (what it was trained on: lengths, composition, the file and its sha256),
    or {} for a folder without one."""
    path = Path(run_dir) / "data_stats.json"
    return json.loads(path.read_text()) if path.exists() else {}


TUNING_FILE = "tuning.json"         # what a run set for itself on its validation split (see Tuning)


def read_tuning(run_dir) -> dict:
    """The run's tuning.json (its guidance and score mix, with the figures behind them), or {} before the run
    tuned itself (or for a run of a version that did not)."""
    path = Path(run_dir) / TUNING_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def export_model(run_dir, checkpoint: str = "best") -> Path:
    """Write run_dir/model.pt: the sampling weights, vocabulary, config, data stats and tuning, without the
    optimizer state (a few MB for the small preset). load_run and generate take it, or a folder holding
    it; resuming training needs last.pt."""
    run_dir = Path(run_dir)
    source = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(source)
    model = {"format": CHECKPOINT_FORMAT, "config": ckpt["config"], "letters": ckpt["letters"],
             "targets": ckpt["targets"], "model": sampling_weights(ckpt), "step": ckpt["step"],
             "epoch": ckpt["epoch"], "source": source.name, "stats": read_data_stats(run_dir) or ckpt.get("stats", {}),
             "tuning": read_tuning(run_dir) or ckpt.get("tuning", {})}
    out = run_dir / MODEL_FILE
    atomic_write(out, lambda f: torch.save(model, f))
    return out


# --- resume policy: which checkpoint, which config, the same data -----------------------------

# What a resumed run may change: how long it runs and where. Its model, optimisation and data stay.
RESUMABLE = ("epochs", "max_steps", "device", "save_every_minutes", "compile", "log_every", "precision", "cuda_graph")


def resume_checkpoint(run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint a run continues from: last.pt, or best.pt when there is no last.pt (the user removed
    an unreadable one, as the error below offers); None for a new run. A folder that already holds a
    run is continued only when asked (`resume`)."""
    found = [run_dir / name for name in ("last.pt", "best.pt") if (run_dir / name).exists()]
    if not found:
        if resume and run_dir.exists() and any(run_dir.iterdir()):
            log(f"{run_dir}: no checkpoint yet; starting the run from the beginning")
        return None
    if not resume:
        raise DataError(f"{run_dir} already holds a run ({found[0].name}): to continue it, {control('resume')}; "
                        f"or choose another run name ({control('run_name')}).")
    if found[0].name == "best.pt":
        log(f"{run_dir}: no last.pt; continuing from best.pt")
    try:
        return load_checkpoint(found[0])
    except DataError as e:
        raise DataError(f"{e}\n{fallback_advice(run_dir, found[0])}") from e


def fallback_advice(run_dir: Path, bad: Path) -> str:
    """What to do when `bad` cannot be read: continue from an intact best.pt, or start over."""
    best = run_dir / "best.pt"
    try:
        ckpt = load_checkpoint(best) if bad != best else None
    except DataError:
        ckpt = None
    if ckpt is None:
        return (f"There is no intact best.pt to fall back on: choose another run name ({control('run_name')}) "
                f"to start over, or delete {run_dir}.")
    return (f"best.pt beside it is intact (step {ckpt['step']}, epoch {ckpt['epoch']}): delete or rename "
            f"{bad.name} and run again to continue from best.pt (steps after {ckpt['step']} are trained again).")


def saved_config(run_dir) -> dict | None:
    """A run's config.json, or None when the folder holds no run yet."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def resumed_config(run_dir, saved: dict, preset: str | None, settings: dict) -> Config:
    """The config a resumed run trains with: its saved config with the RESUMABLE settings and the data path
    taken from `settings` (None values: not given). Another preset is an error; other settings given are
    left out with a note, since a run keeps its model and optimisation."""
    if preset and preset != saved["preset"]:
        raise DataError(f"{run_dir} holds a {saved['preset']} run, which cannot continue as {preset}: resume it "
                        f"with preset {saved['preset']}, or choose another run name ({control('run_name')})")
    base = asdict(config_from_saved(saved))
    ignored = sorted(k for k, v in settings.items() if k not in RESUMABLE + ("data",) and v not in (None, base.get(k)))
    if ignored:
        log(f"note: a resumed run keeps its own settings; {', '.join(ignored)} left as the run has them")
    kept = {k: v for k, v in settings.items() if k in RESUMABLE and v is not None}
    data = settings.get("data") or base["data"]     # the same data may live at a new path (check_same_data)
    return make_config(base.pop("preset"), **{**base, **kept, "data": data})


def check_same_data(run_dir, rows: Rows, vocab: Vocab, data_sha256: str) -> None:
    """A run continues only on the data it was trained on: no new letters or targets, the same checksum."""
    extra_letters = set("".join(rows.sequences)) - set(vocab.letters)
    extra_targets = {t for t in rows.targets if t} - set(vocab.targets)
    another = f"A run continues only on its own data: choose another run name ({control('run_name')}) for these."
    if extra_letters or extra_targets:
        raise DataError(f"{rows.path} does not match the checkpoint in {run_dir}: new letters {sorted(extra_letters)}, "
                        f"new targets {sorted(extra_targets)[:10]}. {another}")
    trained_on = read_data_stats(run_dir)
    if trained_on.get("data_sha256") and trained_on["data_sha256"] != data_sha256:
        raise DataError(f"{run_dir} was trained on {trained_on['data']} (sha256 {trained_on['data_sha256'][:12]}), and "
                        f"{rows.path} holds other data (sha256 {data_sha256[:12] or 'unknown'}). {another}")


class CheckpointFiles:
    """A run's last.pt and best.pt, written atomically by rank 0 (the only rank that writes files); it knows
    which step the last good state on disk holds, for the errors that stop a run."""

    def __init__(self, run_dir: Path, writes: bool, saved_step: int):
        self.run_dir, self.writes, self.saved_step = run_dir, writes, saved_step

    def save(self, ckpt: dict, best: bool = False):
        """last.pt (and best.pt). A disk that refuses stops the run with a DiskError saying which step the
        checkpoints on disk still hold."""
        if not self.writes:
            return
        try:
            atomic_write(self.run_dir / "last.pt", lambda f: torch.save(ckpt, f))
            self.saved_step = ckpt["step"]
            if best:
                atomic_write(self.run_dir / "best.pt", lambda f: torch.save(ckpt, f))
        except DiskError as e:
            raise DiskError(f"{e}. Training stopped at step {ckpt['step']}; {self.kept_state()}. Free some disk "
                            f"space or choose a writable checkpoint directory, then resume the run.") from e

    def kept_state(self) -> str:
        """Where the last good state is."""
        if not (self.run_dir / "last.pt").exists():
            return "no checkpoint was saved yet"
        return f"{self.run_dir}/last.pt keeps the last good state (step {self.saved_step})"


def start_run_folder(run_dir: Path, cfg: Config, vocab: Vocab, stats: dict, new: bool):
    """config.json (a resumed run's too: its current settings); for a new run vocab.json and data_stats.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", asdict(cfg))
    if new:
        write_json(run_dir / "vocab.json", {"letters": vocab.letters, "targets": vocab.targets})
        write_json(run_dir / "data_stats.json", stats)


def plot_convergence(run_dir, out: str | None = None):
    """convergence.png: training ce / vb / loss per step (smoothed) and held-out per epoch, with the
    ln K line (the ce of a uniform guess), and the held-out binders' bound that picks best.pt (when the run
    has held-out binders). Returns the figure."""
    plt = pyplot()
    run_dir = Path(run_dir)
    hist = json.loads((run_dir / "history.json").read_text())
    steps = np.genfromtxt(run_dir / "history_steps.csv", delimiter=",", names=True, ndmin=1)
    binders = [e for e in hist["epochs"] if e.get("val_binder_bits") is not None]
    fig, axes = plt.subplots(1, 4 if binders else 3, figsize=(17 if binders else 13, 3.6))
    window = max(1, len(steps) // 100)
    smooth = lambda y: np.convolve(y, np.ones(window) / window, mode="valid")
    for ax, key in zip(axes, ("ce", "vb", "loss")):
        if len(steps):
            ax.plot(steps["step"][window - 1:], smooth(steps[key]), lw=1, label="train (per step)")
        ep = [e for e in hist["epochs"] if f"val_{key}" in e]
        ax.plot([e["step"] for e in ep], [e[f"val_{key}"] for e in ep], "o-", ms=3, label="held-out (per epoch)")
        if key == "ce":
            ax.axhline(hist["ln_k"], color="gray", ls="--", lw=1, label=f"ln K = {hist['ln_k']:.2f} (uniform guess)")
        ax.set_title(key + (" (nats per residue)" if key != "loss" else ""))
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    if binders:
        best = min(binders, key=lambda e: e["val_binder_bits"])
        axes[3].plot([e["step"] for e in binders], [e["val_binder_bits"] for e in binders], "o-", ms=3, color="C2",
                     label="held-out binders (per epoch)")
        axes[3].plot(best["step"], best["val_binder_bits"], "k*", ms=10, label=f"best.pt (step {best['step']})")
        axes[3].set_title("binders' bound (bits per residue)")
        axes[3].set_xlabel("step")
        axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out or run_dir / "convergence.png", dpi=110)
    plt.close(fig)          # the notebook shows the saved PNG; an open figure per epoch would pile up
    return fig


# =============================================================================================
# Training
# =============================================================================================


WARMUP_MAX_FRACTION = 0.1          # warm-up never takes more than this share of a run's steps


def warmup_steps(cfg: Config, total_steps: int) -> int:
    """The preset's warm-up, cut to WARMUP_MAX_FRACTION of the run, so a short run (a small dataset)
    still reaches the peak lr and decays from it."""
    return max(1, min(cfg.warmup, int(WARMUP_MAX_FRACTION * total_steps)))


def lr_at(step: int, cfg: Config, total_steps: int) -> float:
    """Multiplier of the base lr: linear warmup, then cosine decay to 10% at the last step."""
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, cfg: Config):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=True)   # one kernel for all tensors


def drop_condition(label, target_id, p: float, label1_repeat: int = 1):
    """Classifier-free guidance training: with probability p forget label and target, and with
    probability p forget only the target (so "an interacting peptide for any target" is learned too).
    The rows that lose their label teach the unconditional model that guidance steers away from; it must
    see the data's own mix of labels, so label-1 rows, which an epoch shows label1_repeat times, lose
    their label that many times less often."""
    if p <= 0:
        return label, target_id
    u = torch.rand(label.shape, device=label.device)
    p_both = torch.where(label == 1, p / label1_repeat, p)
    label = torch.where(u < p_both, UNKNOWN_LABEL, label)
    target_id = torch.where(u < p_both + p, UNKNOWN_TARGET, target_id)
    return label, target_id


def drop_references(target_id, refs, id_drop: float):
    """The references follow the target: a row whose target drop_condition forgot (guidance's unconditional
    rows) loses them too. Then, with probability id_drop, the target id alone is hidden: the model must
    read the target from its known binders, all it has of a receptor it never saw."""
    if refs is None:
        return target_id, refs
    refs = refs.masked_fill((target_id == UNKNOWN_TARGET)[:, None, None], PAD)
    if id_drop > 0:
        hidden = torch.rand(target_id.shape, device=target_id.device) < id_drop
        target_id = torch.where(hidden, UNKNOWN_TARGET, target_id)
    return target_id, refs


class KnownBinders:
    """Each target's training binders, for drawing the references a row reads: `rows` (M,) indexes the
    training tokens `x0`, grouped by target (`start`, `count` per target id); `slot` (N,) is a training row's
    place among its target's binders (-1: not a binder), so a row is never drawn as its own reference."""

    def __init__(self, x0, label, target_id, num_targets: int):
        binders = torch.nonzero((label == 1) & (target_id != UNKNOWN_TARGET)).flatten()
        binders = binders[torch.argsort(target_id[binders], stable=True)]
        self.x0, self.rows = x0, binders
        self.count = torch.bincount(target_id[binders], minlength=num_targets)
        self.start = torch.cumsum(self.count, 0) - self.count
        self.slot = torch.full_like(target_id, -1)
        self.slot[binders] = torch.arange(len(binders), device=x0.device) - self.start[target_id[binders]]

    def draw(self, target_id, slot, n_refs: int, generator=None):
        """n_refs references per row (B, n_refs, L) tokens, drawn with replacement from the row's target's
        binders other than the row itself (slot >= 0); all PAD where there is none. Static shapes and draws
        on the device: a CUDA graph replays it."""
        own = slot >= 0
        available = (self.count[target_id] - own.long())[:, None]                  # (B, 1)
        u = torch.rand((len(target_id), n_refs), device=target_id.device, generator=generator)
        j = (u * available).long()
        j = j + (own[:, None] & (j >= slot[:, None])).long()                        # skip the row itself
        at = (self.start[target_id][:, None] + j).clamp(max=max(len(self.rows) - 1, 0))
        refs = self.x0[self.rows[at]] if len(self.rows) else torch.zeros(*at.shape, self.x0.shape[1],
                                                                         dtype=self.x0.dtype, device=self.x0.device)
        return refs.masked_fill((available == 0)[..., None], PAD).long()


class DeviceData:
    """The tokenized dataset resident on the training device: a batch is an index gather. With n_refs > 0
    each row of a batch also reads n_refs known binders of its target, drawn from `known` (the training
    data's own binders when None: a training row never reads itself; other rows read any of them)."""

    def __init__(self, rows: Rows, vocab: Vocab, idx, device, n_refs: int = 0, known: KnownBinders | None = None):
        idx = np.asarray(idx, dtype=np.int64)
        self.x0 = torch.from_numpy(vocab.encode([rows.sequences[i] for i in idx.tolist()])).to(device)
        self.label = torch.from_numpy(rows.labels[idx]).to(device)
        self.target_id = torch.from_numpy(vocab.target_ids([rows.targets[i] for i in idx.tolist()])).to(device)
        self.n_refs, self.known = n_refs, None
        if n_refs:
            self.known = known or KnownBinders(self.x0, self.label, self.target_id, vocab.num_targets)
            self.slot = self.known.slot if known is None else torch.full_like(self.target_id, -1)

    def __len__(self):
        return self.x0.shape[0]

    def batch(self, idx, generator=None):
        """(x0 (B, L), label (B,), target_id (B,), refs (B, R, L) or None)."""
        refs = None
        if self.n_refs:
            refs = self.known.draw(self.target_id[idx], self.slot[idx], self.n_refs, generator)
        return self.x0[idx].long(), self.label[idx], self.target_id[idx], refs


def epoch_rows(label, label1_repeat: int):
    """Indices of the rows an epoch visits, (M,): every training row once and each label-1 row
    label1_repeat times in all. Label-1 rows are a few percent of the data; repeated, the conditional
    grammar gets a fair share of the gradient. The model is conditional, so what each condition should
    predict stays the same; only how often it is trained changes."""
    rows = torch.arange(len(label), device=label.device)
    return torch.cat([rows, rows[label == 1].repeat(label1_repeat - 1)])


def epoch_permutation(n: int, seed: int, epoch: int, device):
    """The order of epoch `epoch`: a function of (seed, epoch) only, so a resumed run replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


@torch.no_grad()
def heldout_losses(model, diffusion: D3PM, data: DeviceData, cfg: Config, batch_size: int = 1024) -> dict:
    """ce / vb / loss on held-out rows (heldout_subset's rows when there are more than max_val_rows) with
    fixed noise (its own generator), so epochs compare fairly and the training RNG stream is untouched."""
    was_training = model.training
    model.eval()
    device = data.x0.device
    g = torch.Generator(device=device).manual_seed(12345)
    rows = torch.from_numpy(heldout_subset(len(data), cfg.max_val_rows)).to(device)
    sums = torch.zeros(3, device=device)
    for start in range(0, len(rows), batch_size):
        x0, label, target_id, refs = data.batch(rows[start:start + batch_size], generator=g)
        ce, vb = diffusion.losses(model, x0, label, target_id, generator=g, precision=cfg.precision, refs=refs)
        w = (x0 != PAD).sum()
        sums += torch.stack([ce * w, vb * w, w.float()])
    model.train(was_training)
    ce, vb, w = sums.tolist()
    ce, vb = ce / max(w, 1), vb / max(w, 1)
    return {"ce": ce, "vb": vb, "loss": ce + cfg.hybrid_coeff * vb}


@torch.no_grad()
def heldout_binder_bits(model, diffusion: D3PM, data: DeviceData, rows) -> float | None:
    """The variational bound of the held-out binders data[rows] (label-1 rows of targets the run trains on),
    in bits per residue, each peptide with its own fixed noise (peptide_noise, seed 0), so epochs compare
    fairly: what best.pt is chosen by. Background is ~98% of the held-out rows, and the overall loss that it
    dominates picks a checkpoint that knows the targets little. None without such rows."""
    if len(rows) == 0:
        return None
    was_training = model.training
    model.eval()
    x0, label, target_id, refs = data.batch(rows, generator=torch.Generator(data.x0.device).manual_seed(0))
    nats = heldout_bound_nats(model, diffusion, x0, label, target_id, seed=0, refs=refs)
    model.train(was_training)
    return nats.sum().item() / math.log(2) / (x0 != PAD).sum().item()


def format_duration(seconds: float) -> str:
    """'40 s', '12 min', '2 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class RunTimer:
    """An on_step callback (chained before `then`) that times a stretch of steps once the first ones
    (start-up, compilation) are behind, and logs how long the rest of the run will take. It waits for the
    device at both ends, so asynchronous GPU steps are timed honestly. The stretch is at most half an
    epoch, and starts over when an epoch end (held-out scoring, checkpoint) falls inside it."""

    def __init__(self, trainer, then=None, skip: int = 10, stretch: int = 50):
        self.trainer, self.then = trainer, then
        self.stretch = max(1, min(stretch, trainer.steps_per_epoch // 2))
        self.start, self.t0, self.epoch = trainer.step + skip, None, None

    def __call__(self, step: int):
        if self.then is not None:
            self.then(step)
        t = self.trainer
        if not t.is_main or step not in (self.start, self.start + self.stretch):
            return
        if t.device.type == "cuda":
            torch.cuda.synchronize(t.device)
        if step == self.start or t.epoch != self.epoch:
            self.start, self.t0, self.epoch = step, time.perf_counter(), t.epoch
            return
        per_step = (time.perf_counter() - self.t0) / self.stretch
        left = t.total_steps - step
        log(f"{per_step * 1e3:.0f} ms a step: the remaining {left:,} steps take about "
            f"{format_duration(left * per_step)} (plus held-out scoring at each epoch end)")


class NonFiniteLoss(RuntimeError):
    pass


# fp16 steps whose gradient overflows are skipped while the gradient scaler lowers its scale (halving it
# each time); this many in a row means the scale is not the cause, and the run stops.
MAX_FP16_SKIPS_IN_A_ROW = 20


class DeferredInterrupt:
    """Holds Ctrl-C (SIGINT, also a notebook's interrupt) until the training step under way is over, so a
    run stops between steps: what it saves (weights, optimizer, step, RNG) is a state an uninterrupted
    run passes through, never half a step. A second Ctrl-C stops at once, without saving. install() takes
    SIGINT over only from Python's own Ctrl-C handler (main thread, SIGINT not ignored or taken by someone
    else); restore() gives it back."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.requested, self.hard = enabled, False, False
        self._previous = None

    def install(self):
        if (self.enabled and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            self.hard = True
            raise KeyboardInterrupt
        self.requested = True               # no printing here: the handler may run inside a write to stderr

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


# --- the step as one CUDA graph ------------------------------------------------------------

GRAPH_WARMUP_STEPS = 3      # eager steps before each capture (real training steps, run on a side stream)


class CudaGraph:
    """torch.cuda.CUDAGraph behind the two calls CudaGraphStep makes: capture(fn) records fn's kernels without
    running them (nothing on the device changes), replay() runs them and returns fn's outputs, tensors that
    each replay overwrites."""

    def __init__(self):
        self.graph, self.out = torch.cuda.CUDAGraph(), None

    def capture(self, fn):
        with torch.cuda.graph(self.graph):
            self.out = fn()

    def replay(self):
        self.graph.replay()
        return self.out


class CudaGraphStep:
    """The device's share of a training step (Trainer.update: condition dropout, noise, forward, loss, backward,
    clipping, AdamW, gradient scaler) replayed as one CUDA graph: one launch instead of ~500 kernels, which a
    small model otherwise waits on. Nothing is frozen at capture; what changes from step to step enters
    through tensors the graph reads: the batch's row indices (`idx`, gathered inside the graph), each param
    group's lr (`lrs`, 0-dim, filled from the scheduler's float before each replay), the scaler's scale, and
    the CUDA generator, whose offset a replay advances as the eager step's draws would. The host's share
    (the lr schedule, the EMA) runs eagerly after each step (Trainer.after_update).
    The first `warmup` steps after set-up or reset() are real training steps run eagerly on a side stream
    (cuBLAS, autocast and AdamW's state are set up there, as torch's whole-network capture asks), so warming
    up follows the eager run's trajectory; then a capture, which runs nothing, and a replay per step. reset()
    after anything that replaces the tensors the graph reads (a restore: load_state_dict makes new optimizer
    state): the next steps warm up and capture again, from the restored state."""

    make_graph = CudaGraph          # what records and replays; tests put a CPU stand-in here
    device_types = ("cuda",)        # where a graph can be captured

    def __init__(self, trainer, warmup: int = GRAPH_WARMUP_STEPS):
        self.trainer, self.warmup, self.captures = trainer, warmup, 0
        device = trainer.device
        self.idx = torch.zeros(trainer.cfg.batch_size, dtype=torch.long, device=device)
        self.lrs = [self.lr_buffer(device) for _ in trainer.optimizer.param_groups]
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.reset()

    @classmethod
    def for_trainer(cls, trainer):
        """The graph step a Trainer uses, or None for the eager step: graphs need cfg.cuda_graph and one CUDA
        device; DDP (world > 1) and torch.compile keep the eager step."""
        cfg = trainer.cfg
        if not cfg.cuda_graph:
            return None
        why = ("it needs a CUDA GPU" if trainer.device.type not in cls.device_types else
               "it runs on a single process, not under DDP" if trainer.world > 1 else
               "it does not combine with compile" if cfg.compile else None)
        if why:
            if trainer.is_main:
                log(f"note: cuda_graph is on, but {why}: training with the eager step")
            return None
        return cls(trainer)

    @staticmethod
    def lr_buffer(device):
        """A 0-dim lr for fused AdamW: float32 on CUDA, whose kernel reads a float there; float64 elsewhere, where
        the kernel reads it as the double a float lr is, so the step is the float lr's bit for bit."""
        return torch.zeros((), dtype=torch.float32 if device.type == "cuda" else torch.float64, device=device)

    def reset(self):
        """Forget the graph: the next `warmup` steps run eagerly, then the step is captured again."""
        self.graph, self.eager_left = None, self.warmup

    def __call__(self, idx):
        """One training step on the rows `idx` of the training data (as Trainer.train_step on their batch)."""
        trainer = self.trainer
        self.idx.copy_(idx)
        for lr, group in zip(self.lrs, trainer.optimizer.param_groups):
            lr.fill_(group["lr"])                       # the float the scheduler set for this step
        if self.graph is None and self.eager_left == 0:
            self._capture()
        if self.graph is not None:
            out = self.graph.replay()
        else:
            self.eager_left -= 1
            out = self._on_side_stream(self._update)
        trainer.after_update()
        return out

    def _update(self):
        trainer = self.trainer
        return trainer.update(*trainer.train_data.batch(self.idx), lrs=self.lrs)

    def _capture(self):
        for group in self.trainer.optimizer.param_groups:
            group["capturable"] = True                  # fused AdamW; a checkpoint's param groups may say False
        self.graph = self.make_graph()
        self.graph.capture(self._update)
        self.captures += 1

    def _on_side_stream(self, fn):
        if self.stream is None:
            return fn()
        current = torch.cuda.current_stream(self.trainer.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = fn()
        current.wait_stream(self.stream)
        out.record_stream(current)                         # read on the main stream; allocated on this one
        return out


class StepLog:
    """Every step's (ce, vb, loss, gradient norm), kept on the device and read every log_every steps (the
    training loop's only host sync): screened for steps that went wrong, appended to history_steps.csv,
    shown on the progress bar. `path` is None on ranks other than 0, which keep no files. A non-finite
    gradient's update was skipped on the device; under fp16 up to `skip_tolerance` such steps in a row
    are the gradient scaler settling (counted in skipped_steps), one more stops the run."""

    HEADER = "step,epoch,lr,ce,vb,loss\n"

    def __init__(self, path: Path | None, device, log_every: int, world: int, lr_of_step, skip_tolerance: int,
                 kept_state):
        self.path, self.world, self.lr_of_step, self.kept_state = path, world, lr_of_step, kept_state
        self.buffer = torch.zeros(log_every, 4, device=device)       # per-step (ce, vb, loss, gradient norm)
        self.pending = 0                                             # steps in the buffer not read yet
        self.skip_tolerance, self.skipped_steps, self.skips_in_a_row = skip_tolerance, [], 0
        self.file = None

    def start(self):
        """A new run: the CSV with its header only."""
        if self.path is not None:
            atomic_write(self.path, lambda f: f.write(self.HEADER.encode()))

    def keep_until(self, step: int):
        """A resumed run: drop the steps logged after its checkpoint, which it trains again."""
        if self.path is None or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= step]
        atomic_write(self.path, lambda f: f.write(("\n".join(kept) + "\n").encode()))

    def open(self):
        self.file = open(self.path, "a") if self.path is not None else None

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def record(self, values) -> bool:
        """Keep one step's values on the device; True when the buffer is full and should be flushed."""
        self.buffer[self.pending] = values
        self.pending += 1
        return self.pending == len(self.buffer)

    def flush(self, step: int, epoch: int, bar) -> list:
        """Read the pending steps (the last of them is `step`), stop on one that went wrong, write them to
        the CSV and the progress bar. Returns their finite (ce, vb, loss), for the epoch's means."""
        n, self.pending = self.pending, 0
        if n == 0:
            return []
        if self.world > 1:                              # each rank holds its share of every step's loss
            torch.distributed.all_reduce(self.buffer[:n])
        readings = self.buffer[:n].tolist()
        first = step - n + 1
        self.screen(readings, first)
        values = [r[:3] for r in readings]
        finite = [v for v in values if all(map(math.isfinite, v))]  # fp16 steps skipped for an overflow may lack a loss
        if self.file is not None:
            self.write(values, first, epoch, step)
        if finite:
            ce, vb, loss = np.mean(finite, axis=0)
            bar.set_postfix(ce=f"{ce:.3f}", vb=f"{vb:.3f}", loss=f"{loss:.3f}", refresh=False)
        return finite

    def write(self, values: list, first: int, epoch: int, step: int):
        try:
            self.file.write("".join(f"{first + i},{epoch + 1},{self.lr_of_step(first + i):.6g},{ce:.6g},{vb:.6g},"
                                    f"{loss:.6g}\n" for i, (ce, vb, loss) in enumerate(values)))
            self.file.flush()
        except OSError as e:
            raise DiskError(f"cannot write {self.path}: {e.strerror or e}. Training stopped at step {step}; "
                            f"{self.kept_state()}. Free some disk space, then resume the run.") from e

    def screen(self, readings: list, first: int):
        """Stop on a step that went wrong: a non-finite loss, or a gradient that was not finite beyond the
        tolerance. Tolerated skips are counted and said."""
        new_skips = []
        for i, (ce, vb, loss, grad_norm) in enumerate(readings):
            losses_finite = all(map(math.isfinite, (ce, vb, loss)))
            if math.isfinite(grad_norm):
                self.skips_in_a_row = 0
                if losses_finite:
                    continue
            else:
                new_skips.append(first + i)
                self.skips_in_a_row += 1
                if self.skips_in_a_row <= self.skip_tolerance:
                    continue
            self.skipped_steps += new_skips
            raise NonFiniteLoss(self.problem(first + i, ce, vb, loss, losses_finite))
        self.skipped_steps += new_skips
        if new_skips and self.path is not None:
            log(f"step{'s' if len(new_skips) > 1 else ''} {', '.join(map(str, new_skips))}: fp16 gradient overflow, "
                f"update skipped while the gradient scaler settles ({len(self.skipped_steps)} skipped so far)")

    def problem(self, step: int, ce, vb, loss, losses_finite: bool) -> str:
        problem = (f"loss became {loss} (ce {ce}, vb {vb}) at step {step}" if not losses_finite else
                   f"the gradient was not finite at step {step} (its loss was {loss:.4g}); that update was skipped")
        if self.skips_in_a_row > 1:
            problem += (f"; steps {step - self.skips_in_a_row + 1}-{step} were all skipped, although the fp16 "
                        f"gradient scaler lowered its scale after each")
        return f"{problem}; stopping: {self.kept_state()}. Try a lower learning rate."


class Trainer:
    """One training run: set-up (data on the device, model, optimizer), restore, the step, the loop and
    the epoch end. Resume policy (resume_checkpoint, resumed_config, check_same_data), per-step logging
    (StepLog) and the checkpoint files are pieces of their own that it calls."""

    def __init__(self, cfg: Config, run_dir, resume: bool = False, skip_invalid: bool = False, rows=None):
        """`rows` (already validated) replaces loading cfg.data, e.g. for benchmarks."""
        self.run_dir = Path(run_dir)
        ckpt = resume_checkpoint(self.run_dir, resume)
        if ckpt is not None:
            cfg = resumed_config(self.run_dir, ckpt["config"], cfg.preset, {k: getattr(cfg, k) for k in RESUMABLE + ("data",)})
        self.cfg = cfg
        self.rank, self.world, self.device = distributed_setup(cfg.device)
        self.is_main = self.rank == 0                   # only rank 0 writes logs, plots and checkpoints
        self.part = self.batch_share()
        rows = rows if rows is not None else load_rows(cfg.data or None, skip_invalid=skip_invalid)
        self.vocab = Vocab(ckpt["letters"], ckpt["targets"]) if ckpt else Vocab.from_rows(rows)
        self.put_data_on_device(rows, skip_invalid, check=ckpt is not None)
        self.diffusion = D3PM(len(self.vocab.letters), cfg.n_steps, self.device, cfg.noise)
        self.model = build_model(cfg, self.vocab, self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema_decay else None
        self.epoch_rows = epoch_rows(self.train_data.label, cfg.label1_repeat)
        self.steps_per_epoch = max(1, len(self.epoch_rows) // cfg.batch_size)
        self.total_steps = min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or math.inf)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, cfg, self.total_steps))
        self.amp = amp_dtype(self.device, cfg.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.forward = self.parallel_model()
        self.graph_step = CudaGraphStep.for_trainer(self)    # None: the eager step (train_step)
        self.step, self.epoch, self.best_val, self.history, self.mid_step = 0, 0, float("inf"), [], False
        self.checkpoints = CheckpointFiles(self.run_dir, self.is_main, ckpt["step"] if ckpt else 0)
        self.steps = StepLog(self.run_dir / "history_steps.csv" if self.is_main else None, self.device, cfg.log_every,
                             self.world, lambda step: cfg.lr * lr_at(step - 1, cfg, self.total_steps),
                             MAX_FP16_SKIPS_IN_A_ROW if self.scaler.is_enabled() else 0, self.checkpoints.kept_state)
        if ckpt:
            self.restore(ckpt)
        else:
            torch.manual_seed(cfg.seed)                 # the same stream on every rank: they share the noise
        if self.is_main:
            start_run_folder(self.run_dir, cfg, self.vocab, self.stats, new=ckpt is None)
            self.say_what_is_odd()
            if ckpt is None:
                self.steps.start()

    # -- set-up ------------------------------------------------------------------------------

    def batch_share(self) -> slice:
        """The rows of each global batch this rank scores (all of them in a single process)."""
        if self.cfg.batch_size % self.world:
            raise DataError(f"batch size {self.cfg.batch_size} does not split over {self.world} processes")
        share = self.cfg.batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share) if self.world > 1 else slice(None)

    def put_data_on_device(self, rows: Rows, skip_invalid: bool, check: bool):
        """The split, both parts on the device, and the training part's statistics (data_stats.json)."""
        data_sha256 = file_checksum(rows.path) if Path(rows.path).is_file() else ""
        if check:
            check_same_data(self.run_dir, rows, self.vocab, data_sha256)
        train_idx, val_idx = split_for_training(rows, self.cfg.val_fraction, quiet=not self.is_main)
        self.train_data = DeviceData(rows, self.vocab, train_idx, self.device, self.cfg.references)
        self.val_data = DeviceData(rows, self.vocab, val_idx, self.device, self.cfg.references, self.train_data.known)
        trained = torch.unique(self.train_data.target_id[self.train_data.label == 1])
        binders = torch.nonzero((self.val_data.label == 1) & torch.isin(self.val_data.target_id, trained)).flatten()
        subset = torch.from_numpy(heldout_subset(len(binders), self.cfg.max_val_rows)).to(self.device)
        self.binder_rows = binders[subset]
        self.best_by = "binder_bits" if len(self.binder_rows) else "loss"       # what best.pt is chosen by
        self.validation = validation_split(rows, train_idx, val_idx)            # what the run tunes itself on
        self.stats = {**data_stats(subset_rows(rows, train_idx), self.vocab), "heldout_rows": len(val_idx),
                      "data": rows.path, "data_sha256": data_sha256, "skip_invalid": skip_invalid}

    def parallel_model(self):
        """The module the step calls: the model, wrapped for data parallelism and compiled when asked."""
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        forward = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            forward = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        return torch.compile(forward) if self.cfg.compile else forward

    def say_what_is_odd(self):
        if self.device.type != "cuda" and self.cfg.precision not in ("auto", "fp32"):
            log(f"note: precision {self.cfg.precision} applies on a GPU; on the {self.device.type} training runs in fp32")
        if self.total_steps < self.cfg.warmup:
            log(f"note: this run is only {self.total_steps} steps ({self.steps_per_epoch} an epoch), fewer than the "
                f"{self.cfg.preset} preset's warm-up of {self.cfg.warmup} steps alone: warm-up is cut to "
                f"{warmup_steps(self.cfg, self.total_steps)} of them and the model will learn little. More data, or "
                f"more epochs ({control('epochs')}), make a longer run.")

    # -- checkpoints -------------------------------------------------------------------------

    def restore(self, ckpt: dict):
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise DataError(f"{self.run_dir}/last.pt does not fit this model config: {e}") from e
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.best_val, self.history = ckpt["step"], ckpt["epoch"], ckpt["best_val"], ckpt["history"]
        if ckpt.get("best_by", "loss") != self.best_by:    # saved by a version that chose best.pt otherwise
            self.best_val = float("inf")
        torch.set_rng_state(ckpt["rng_cpu"])
        if self.device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], self.device)
        if self.graph_step is not None:                 # new optimizer state: warm up and capture again
            self.graph_step.reset()
        if self.is_main:
            self.steps.keep_until(self.step)
            log(f"resuming {self.run_dir} at step {self.step} (epoch {self.epoch + 1})")

    def checkpoint(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "config": asdict(self.cfg), "letters": self.vocab.letters,
                "targets": self.vocab.targets, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "step": self.step, "epoch": self.epoch, "best_val": self.best_val, "best_by": self.best_by,
                "history": self.history,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def save(self, best: bool = False):
        self.checkpoints.save(self.checkpoint() if self.is_main else {}, best)

    # -- the step and the loop ---------------------------------------------------------------

    def train_step(self, x0, label, target_id, refs=None):
        """One optimizer step on a global batch (every rank gets the whole batch and scores its part).
        Returns this rank's (ce, vb, loss) share and the gradient norm; nothing here reads them on the host.
        A step whose gradient is not finite changes nothing (weights, moments, step counts); the StepLog
        sees its norm and decides whether the run goes on."""
        values = self.update(x0, label, target_id, refs)
        self.after_update()
        return values

    def update(self, x0, label, target_id, refs=None, lrs=None):
        """The device's share of a step, what CudaGraphStep replays: no value read on the host, no Python
        value that changes between steps. `lrs`: a 0-dim tensor per param group to use as its lr in place
        of the group's float (a graph reads the tensor at each replay)."""
        label, target_id = drop_condition(label, target_id, self.cfg.cond_drop, self.cfg.label1_repeat)
        target_id, refs = drop_references(target_id, refs, self.cfg.id_drop)
        ce, vb = self.diffusion.losses(self.forward, x0, label, target_id, part=self.part,
                                       precision=self.cfg.precision, refs=refs)
        loss = ce + self.cfg.hybrid_coeff * vb if self.cfg.hybrid_coeff else ce   # no backward through an unused vb
        self.scaler.scale(loss * self.world).backward()    # DDP averages gradients over ranks; we want their sum
        self.scaler.unscale_(self.optimizer)                # fp16: the true gradients; a no-op otherwise
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        # Clipping spreads one inf as NaN over every gradient. The fused AdamW kernel skips its update where
        # found_inf is 1 (GradScaler's protocol), reading the flag on the device: no host sync.
        self.optimizer.found_inf, self.optimizer.grad_scale = (~grad_norm.isfinite()).float(), None
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        for group, lr in zip(groups, lrs or ()):
            group["lr"] = lr                                # fused AdamW reads a tensor lr on the device
        try:
            self.optimizer.step()
        finally:
            for group, lr in zip(groups, floats):
                group["lr"] = lr                            # the scheduler and checkpoints keep floats
            del self.optimizer.found_inf, self.optimizer.grad_scale
        self.scaler.update()                                # fp16: a skipped step lowers the scale
        self.optimizer.zero_grad(set_to_none=True)
        return torch.stack([ce.detach(), vb.detach(), loss.detach(), grad_norm.detach()])

    def after_update(self):
        """The host's share of a step, after update(): the lr schedule moves on, and the EMA (eager: its decay
        depends on the step)."""
        self.scheduler.step()
        if self.ema is not None:                  # short warm-up, so early epochs are not the initial weights
            decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - decay)

    def run(self, progress: bool = True, verbose: bool = False, on_step=None) -> dict:
        """Train until the epochs or max_steps run out. Ctrl-C (or a notebook interrupt) lets the step under
        way finish, then saves last.pt: a resumed run continues exactly (see DeferredInterrupt)."""
        if self.step >= self.total_steps:
            log(f"{self.run_dir}: already trained for {self.step} steps; nothing to do")
            return self.summary()
        from tqdm.auto import tqdm
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (progress and self.is_main),
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        interrupt = DeferredInterrupt(enabled=self.world == 1)  # ranks must stop at the same step (collectives)
        self.model.train()
        self.steps.open()
        interrupt.install()
        try:
            while self.step < self.total_steps:
                self.run_epoch(bar, interrupt, verbose, on_step)
        except KeyboardInterrupt:
            self.interrupted(bar, hard=interrupt.hard)
            raise
        finally:
            interrupt.restore()
            self.steps.close()
            bar.close()
        if self.world > 1:              # rank 0 still scores, saves and plots; leaving early races its teardown
            torch.distributed.barrier()
        return self.summary()

    def run_epoch(self, bar, interrupt: DeferredInterrupt, verbose: bool, on_step):
        """The rest of the current epoch (all of it, but after a mid-epoch resume), then its end."""
        cfg = self.cfg
        order = self.epoch_rows[epoch_permutation(len(self.epoch_rows), cfg.seed, self.epoch, self.device)]
        first = self.step - self.epoch * self.steps_per_epoch
        last = min(self.steps_per_epoch, first + self.total_steps - self.step)
        values, last_save = [], time.time()
        for b in range(first, last):
            if interrupt.requested:                     # between steps: the state is one the run passes through
                raise KeyboardInterrupt
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            self.mid_step = True
            full = self.steps.record(self.graph_step(idx) if self.graph_step is not None
                                     else self.train_step(*self.train_data.batch(idx)))
            self.step, self.mid_step = self.step + 1, False
            bar.update(1)
            if full:
                values += self.steps.flush(self.step, self.epoch, bar)
                if self.agree(time.time() - last_save > cfg.save_every_minutes * 60):
                    self.save()
                    last_save = time.time()
            if on_step is not None:
                on_step(self.step)
        values += self.steps.flush(self.step, self.epoch, bar)
        self.end_epoch(values, verbose, partial=last < self.steps_per_epoch)

    def interrupted(self, bar, hard: bool):
        """Ctrl-C: between steps, save the state the run reached; during a step (a second Ctrl-C), keep the
        last checkpoint. Ranks of a data-parallel run stop together and save nothing here."""
        if self.world > 1:
            return
        if not (self.mid_step or hard):
            self.steps.flush(self.step, self.epoch, bar)
            self.save()
            log(f"\ninterrupted: saved {self.run_dir}/last.pt at step {self.step}; to continue, {control('resume')}")
        else:
            log(f"\ninterrupted {f'during step {self.step + 1}' if self.mid_step else 'at once'}: nothing saved; "
                f"{self.checkpoints.kept_state()}")

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (clocks differ; collective calls must not)."""
        if self.world == 1:
            return flag
        flag = torch.tensor([float(flag)], device=self.device)
        torch.distributed.broadcast(flag, 0)
        return bool(flag.item())

    def end_epoch(self, values: list, verbose: bool, partial: bool = False):
        """Held-out losses, history, plot and checkpoints at the end of an epoch (or of a run that
        max_steps stopped mid-epoch: `partial`)."""
        number = self.epoch + 1
        if not partial:
            self.epoch += 1
        if not self.is_main:
            return
        train_means = np.mean(values, axis=0) if values else [float("nan")] * 3
        sampler = self.ema if self.ema is not None else self.model        # best.pt: the weights that sample
        val = heldout_losses(sampler, self.diffusion, self.val_data, self.cfg) if len(self.val_data) else {}
        binder_bits = heldout_binder_bits(sampler, self.diffusion, self.val_data, self.binder_rows)
        record = {"epoch": number, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
                  "train_ce": float(train_means[0]), "train_vb": float(train_means[1]),
                  "train_loss": float(train_means[2]), **{f"val_{k}": v for k, v in val.items()},
                  "val_binder_bits": binder_bits, "partial": partial}
        self.history.append(record)
        criterion = binder_bits if self.best_by == "binder_bits" else val.get("loss", record["train_loss"])
        is_best = criterion < self.best_val
        self.best_val = min(self.best_val, criterion)
        self.save(best=is_best)
        write_json(self.run_dir / "history.json", {"epochs": self.history, "ln_k": math.log(self.diffusion.K)})
        plot_convergence(self.run_dir)
        if verbose:
            binders = f" | held-out binders {binder_bits:.4f} bits/res" if binder_bits is not None else ""
            log(f"epoch {number} step {self.step}: train ce {record['train_ce']:.4f} vb {record['train_vb']:.4f} "
                f"| held-out ce {val.get('ce', float('nan')):.4f} vb {val.get('vb', float('nan')):.4f} loss "
                f"{record.get('val_loss', record['train_loss']):.4f}{binders}{' (best)' if is_best else ''}")

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {"run_dir": str(self.run_dir), "step": self.step, "epoch": self.epoch,
                "best": self.best_val, "best_by": self.best_by, "last": last, "params": count_params(self.model),
                "skipped_steps": len(self.steps.skipped_steps)}


# =============================================================================================
# Sampling
# =============================================================================================


@dataclass
class Run:
    """A trained model loaded from a run directory, ready to sample."""
    cfg: Config
    vocab: Vocab
    model: X0Transformer
    diffusion: D3PM
    stats: dict
    device: torch.device
    run_dir: Path
    tuning: dict = field(default_factory=dict)      # tuning.json: the run's own guidance and score mix


def new_run(cfg: Config, vocab: Vocab, device, weights: dict | None = None, stats: dict | None = None,
            run_dir=".", tuning: dict | None = None) -> Run:
    """A Run from its parts: the model with these weights (a freshly initialised one without)."""
    model = build_model(cfg, vocab)
    if weights is not None:
        model.load_state_dict(weights)
    diffusion = D3PM(len(vocab.letters), cfg.n_steps, device, cfg.noise)
    return Run(cfg, vocab, model.to(device).eval(), diffusion, stats or {},
               device, Path(run_dir), tuning or {})


def load_run(run_dir, checkpoint: str = "best", device: str = "auto") -> Run:
    """A model ready to sample, from a run directory (see checkpoint_path) or a model file (export_model)."""
    run_dir = Path(run_dir)
    if not run_dir.is_file() and run_dir.suffix != ".pt" and not any((run_dir / n).is_file() for n in RUN_FILES):
        raise DataError(no_run_message(run_dir))        # a run name that names no run: say which runs there are
    path = run_dir if run_dir.is_file() else checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    try:
        return new_run(config_from_saved(ckpt["config"]), Vocab(ckpt["letters"], ckpt["targets"]), pick_device(device),
                       sampling_weights(ckpt), ckpt.get("stats") or read_data_stats(path.parent), path.parent,
                       ckpt.get("tuning") or read_tuning(path.parent))
    except DataError as e:
        raise DataError(f"{path}: {e}") from e
    except RuntimeError as e:
        raise DataError(f"{path}: weights do not match the config stored with them: {e}") from e


def as_run(run, checkpoint: str = "best", device: str = "auto") -> Run:
    """`run` itself when it is a Run, else the run loaded from that folder or model file."""
    return run if isinstance(run, Run) else load_run(run, checkpoint=checkpoint, device=device)


def length_probs(run: Run, label: int, target: str | None, min_length: int, max_length: int,
                 binders: list | None = None) -> np.ndarray:
    """P(length) over 0..MAX_LEN within [min_length, max_length]: a target's peptides take the lengths of its
    training binders, however few (a receptor's binders share a length range: on real PDB pairs this made
    its samples more specific to it, 0.842 -> 0.870 at guidance 1, README "On real data"); a target with none
    in the range, and a label, the label's training lengths; uniform in the range if the data have none there.
    Known binders given (a receptor's, see reference_tokens) stand for the target's training binders."""
    in_range = np.zeros(MAX_LEN + 1)
    in_range[min_length:max_length + 1] = 1
    sources = [length_counts(binders) if binders else
               run.stats.get("target_length_counts", {}).get(target, []) if target else [],
               run.stats.get("length_counts", {}).get(str(label), [])]
    for counts in sources:
        probs = np.asarray(counts, dtype=float) * in_range if len(counts) else np.zeros(MAX_LEN + 1)
        if probs.sum() > 0:
            return probs / probs.sum()
    return in_range / in_range.sum()


@torch.no_grad()
def sample_tokens(run: Run, lengths, label: int, target_id: int, guidance: float = 0.0,
                  standard_only: bool = True, generator=None, x0=None, start_step: int | None = None, keep=None,
                  refs=None):
    """Reverse diffusion for peptides of the given lengths (n,). Starts from uniform noise on residue
    positions (q(x_T) is uniform) and draws x_{t-1} ~ p(x_{t-1} | x_t) down to x0. Guidance S mixes the
    conditional and unconditional x0 log-probs, (1 + S) * cond - S * uncond, both from one forward pass
    over 2n rows. Columns past the longest peptide are never computed. Returns tokens (n, MAX_LEN).
    Given tokens x0 (n, MAX_LEN) of those lengths, it starts instead from x0 noised to start_step (T by
    default; 0 returns x0), and where keep (n, MAX_LEN) is True it holds x0's letters at every step.
    refs (n, R, MAX_LEN): the target's known binders each peptide reads (the unconditional twin reads none)."""
    dev, K, T = run.device, run.diffusion.K, run.diffusion.T
    lengths = np.asarray(lengths)
    n, width = len(lengths), int(lengths.max())
    pad_mask = torch.arange(width, device=dev)[None] < torch.as_tensor(lengths, device=dev)[:, None]
    label_t = torch.full((n,), label, device=dev)
    target_t = torch.full((n,), target_id, device=dev)
    if guidance:                                            # rows n..2n-1: the unconditional twin
        label_t = torch.cat([label_t, torch.full_like(label_t, UNKNOWN_LABEL)])
        target_t = torch.cat([target_t, torch.full_like(target_t, UNKNOWN_TARGET)])
        refs = None if refs is None else torch.cat([refs, torch.full_like(refs, PAD)])
    blocked = torch.zeros(K, dtype=torch.bool, device=dev)
    if standard_only:                                       # no X / B / Z / U in generated peptides
        blocked = torch.tensor([c not in RESIDUES for c in run.vocab.letters], device=dev)
    start_step = T if start_step is None else start_step
    if x0 is None:
        xtr = run.diffusion.prior_sample(n, width, generator)
    else:
        x0 = x0[:, :width].to(dev).long()
        _, xtr = run.diffusion.q_sample(x0, torch.full((n,), start_step, device=dev), generator)
    x0r = None if x0 is None else (x0 - 1).clamp_min(0)
    clamp = lambda xtr: xtr if keep is None else torch.where(keep[:, :width].to(dev), x0r, xtr)
    xtr = clamp(xtr)
    for t in range(start_step, 0, -1):
        xt = torch.where(pad_mask, xtr + 1, PAD)
        xt = torch.cat([xt, xt]) if guidance else xt
        with autocast(dev):
            logits = run.model(xt, torch.full((len(xt),), t, device=dev), label_t, target_t, refs)
        logp = logits.float().log_softmax(-1)
        if guidance:
            cond, uncond = logp.chunk(2)
            logp = (1 + guidance) * cond - guidance * uncond
        p0 = logp.masked_fill(blocked, -float("inf")).softmax(-1)
        xtr = clamp(sample_categorical(run.diffusion.posterior(xtr, torch.full((n,), t, device=dev), p0), generator))
    return F.pad(torch.where(pad_mask, xtr + 1, PAD), (0, MAX_LEN - width), value=PAD).cpu()


# The guidance of a run that has not tuned its own (see Tuning), and the floor of every tuning: plain
# conditional sampling. No fixed guidance serves every dataset: on the demo, guidance 0.5-2 made the label-1
# vs background gaps in net charge and hydropathy 1.6-2.3x and 2.0-4.7x the data's (a caricature of the
# condition) while 0 already wrote each motif target's motif in order; on real receptors, whose conditioning
# is weaker, guidance made samples more specific to their receptor (README, "Guidance" and "On real data").
DEFAULT_GUIDANCE = 0.0
DEFAULT_STRENGTH = 0.5


def strength_step(strength: float, n_steps: int) -> int:
    """The diffusion step a variant starts from: the first t with t / T >= strength (0 -> 0, 1 -> T)."""
    return math.ceil(round(strength * n_steps, 6))


def identity(a: str, b: str) -> float:
    """Fraction of positions where two peptides of one length hold the same letter."""
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def check_condition(run: Run, label: int, target: str | None, binders: list | None = None) -> int:
    """The target id of a condition (a target or known binders imply label 1), or a DataError saying what
    is wrong."""
    if label not in (0, 1):
        raise DataError(f"label must be 0 or 1, not {label}")
    if (target or binders is not None) and label == 0:
        what = "a target goes" if target else "known binders go"
        raise DataError(f"{what} with label 1 (background peptides have no target)")
    try:
        return run.vocab.target_id(target)
    except DataError as e:
        new = "; for a receptor it never saw, give its known binders and no target" if run.cfg.references else ""
        raise DataError(f"{e}{new}") from e


def check_binders(run: Run, binders, what: str = "binders") -> list:
    """Known binders given for a target (a list of peptides), uppercase, or a DataError: the run must read
    references (cfg.references), the list must hold at least one, each a peptide of the run's letters."""
    if not run.cfg.references:
        raise DataError(f"this run reads no known binders (trained with references 0): its targets are ids; "
                        f"train with {control('references')} to condition on a target's known binders")
    binders = [b.strip().upper() for b in ([binders] if isinstance(binders, str) else binders)]
    if not binders:
        raise DataError(f"{what}: no peptides (give at least one known binder)")
    problems = [(i + 1, b, why) for i, b in enumerate(binders) if (why := peptide_problem(b, run.vocab.letters))]
    if problems:
        raise DataError(f"{what}: {len(problems)} of {len(binders)} cannot be read:\n"
                        + "\n".join(f"  binder {i} '{b}': {why}" for i, b, why in problems[:20]))
    return binders


def reference_tokens(run: Run, target: str | None, binders: list | None, n: int, generator=None):
    """The known binders n peptides read, (n, R, MAX_LEN) tokens on the run's device, R = cfg.references, each
    drawn (with replacement) from `binders`, else from the target's training binders; None for a run that
    reads none, or when there are none (the model then reads the target id alone, as in training)."""
    R = run.cfg.references
    if not R:
        return None
    binders = binders if binders is not None else run.stats.get("binders", {}).get(target, []) if target else []
    if not binders:
        return None
    tokens = torch.from_numpy(run.vocab.encode(binders)).to(run.device)
    pick = torch.randint(len(binders), (n, R), device=run.device, generator=generator)
    return tokens[pick].long()


def score_references(run: Run, target: str | None, binders: list | None, seed: int):
    """The known binders every peptide scored for a target reads, (1, R, MAX_LEN) or None: one draw from the
    seed, so a peptide's score depends on nothing but it, the run and the seed."""
    return reference_tokens(run, target, binders, 1, torch.Generator(run.device).manual_seed(seed))


def row_references(run: Run, labels, targets: list, seed: int = 0):
    """The known binders each row (label, target) reads, (N, R, MAX_LEN), drawn from its target's training
    binders (all PAD for background and targets without any); None for a run that reads none."""
    if not run.cfg.references:
        return None
    refs = torch.full((len(targets), run.cfg.references, MAX_LEN), PAD, dtype=torch.long, device=run.device)
    g = torch.Generator(run.device).manual_seed(seed)
    rows_of = {}                                        # target -> its label-1 rows, in one pass
    for i, (label, target) in enumerate(zip(np.asarray(labels).tolist(), targets)):
        if label == 1 and target:
            rows_of.setdefault(target, []).append(i)
    for target in sorted(rows_of):
        drawn = reference_tokens(run, target, None, len(rows_of[target]), g)
        if drawn is not None:
            refs[torch.tensor(rows_of[target], device=run.device)] = drawn
    return refs


def check_seed_peptide(run: Run, seq: str, what: str, standard_only: bool, wildcard: str = "") -> str:
    """A parent or template, uppercase, or a DataError naming what is wrong with it."""
    given, seq = seq.strip(), seq.strip().upper()
    problem = peptide_problem(seq, run.vocab.letters, wildcard)
    rare = re.search(f"[^{RESIDUES}{wildcard}]", seq) if standard_only and not problem else None
    if rare:
        problem = (f"'{rare.group()}' at position {rare.start() + 1} is not one of the 20 standard residues, and "
                   f"outputs hold only those unless rare letters are allowed (--allow-rare, standard_only=False)")
    if problem:
        raise DataError(f"{what} '{given}': {problem}")
    return seq


GENERATE_BATCH = 1024               # peptides sampled together; the command line prints each batch as it comes


def run_guidance(run: Run, guidance: float | None = None, target: str | None = "any",
                 binders: list | None = None) -> float:
    """The guidance to sample with: the one asked for; else (None), for peptides made for a target, the run's
    own, tuned on its targets' validation binders (tuning.json); for a receptor given only by its known
    binders (no target), the one tuned for that (`binders_guidance`: the validation targets given by their
    binders alone); else DEFAULT_GUIDANCE. A request without a target (a label only) keeps DEFAULT_GUIDANCE:
    the tuning judged peptides for targets, and guiding a label caricatures it (on the demo, guidance 0.5
    doubled the label-1 vs background gap in hydropathy)."""
    if guidance is not None:
        return guidance
    if not target and binders:
        return float(run.tuning.get("binders_guidance", DEFAULT_GUIDANCE))
    return float(run.tuning.get("guidance", DEFAULT_GUIDANCE)) if target else DEFAULT_GUIDANCE


RANK_POOL = 4           # candidates per peptide when a run ranks them (ranked_batches)
MAX_RANK = 64
POOLS = ("mixed", "mutants")    # the candidates: half the model's samples and half mutated binders, or only these


def run_ranking(run: Run, rank: int | None = None, pool: str | None = None, target: str | None = "any",
                binders: list | None = None) -> tuple[int, str]:
    """(rank, pool): how many candidates the model ranks for every peptide it returns (1: plain sampling) and
    what they are (POOLS). Each is the one asked for; else (None), for a target, the run's own choice
    (tuning.json `rank` and `pool`, tuned beside its guidance); for a receptor given only by its known
    binders, `binders_rank` and `binders_pool`; else 1 (a label alone has nothing to rank by) and mixed."""
    if pool is not None and pool not in POOLS:
        raise DataError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if rank is not None and (not 1 <= rank <= MAX_RANK or int(rank) != rank):
        raise DataError(f"rank must be a whole number from 1 (plain sampling) to {MAX_RANK}, not {rank}")
    own = "binders_" if not target and binders else "" if target else None
    tuned = lambda key, default: run.tuning.get(own + key, default) if own is not None else default
    return int(tuned("rank", 1) if rank is None else rank), pool or tuned("pool", POOLS[0])


def sample_batches(run: Run, n: int, lengths_of, label: int, target: str | None, guidance: float | None,
                   standard_only: bool, seed: int, batch_size: int, x0=None, start_step: int | None = None, keep=None,
                   binders: list | None = None):
    """The sampler every mode shares: n peptides in batches of batch_size (yielded as lists of strings), one
    batch held at a time however many are asked for. lengths_of(m) gives the next m peptides' lengths; x0,
    start_step and keep (one row each, see sample_tokens) are repeated for every peptide. binders: known
    binders of the target (or of a receptor the run never saw, with no target) that the peptides read."""
    if n < 0:
        raise DataError(f"the number of peptides must be 0 or more, not {n}")
    target_id = check_condition(run, label, target, binders)
    guidance = run_guidance(run, guidance, target, binders)
    g = torch.Generator(device=run.device).manual_seed(seed)
    repeat = lambda v, m: None if v is None else v.expand(m, -1)
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        refs = reference_tokens(run, target, binders, m, g) if label == 1 else None
        tokens = sample_tokens(run, lengths_of(m), label, target_id, guidance, standard_only, g, repeat(x0, m),
                               start_step, repeat(keep, m), refs)
        yield run.vocab.decode(tokens)


def generate_batches(run, n: int = 100, label: int = 1, target: str | None = None, min_length: int = MIN_LEN,
                     max_length: int = MAX_LEN, seed: int = 0, guidance: float | None = None,
                     standard_only: bool = True, batch_size: int = GENERATE_BATCH, checkpoint: str = "best",
                     device: str = "auto", binders: list | None = None, rank: int | None = None,
                     pool: str | None = None):
    """n peptides for a condition (label 1 or 0; a target implies label 1; no target: any target), their
    lengths drawn from the training lengths within [min_length, max_length], batch by batch as they are
    made. `run`: a Run, or a run folder or model file (loaded with `checkpoint` on `device`). `binders`: known
    binders the peptides read in place of the target's training binders, or, with no target, a receptor's
    the run never saw (a run trained with references; see reference_tokens). `rank` K > 1: for a target (or
    binders), K candidates for every peptide returned, of which the model's score keeps the best
    (ranked_batches): with `pool` "mixed", half the model's samples and half the target's known binders
    mutated by hand until novel; with "mutants", only these (the samples alone for a target with none).
    None: the run's own choice (run_ranking)."""
    run = as_run(run, checkpoint, device)
    binders = None if binders is None else check_binders(run, binders)
    if not MIN_LEN <= min_length <= max_length <= MAX_LEN:
        raise DataError(f"length range {min_length}-{max_length} must lie within {MIN_LEN}-{MAX_LEN}")
    rank, pool = run_ranking(run, rank, pool, target, binders) if label == 1 else (1, None)
    # Lengths are drawn batch by batch from one generator: the same stream, so the same peptides for a seed,
    # as drawing all n at once (which took 8 bytes a peptide before the first was made).
    rng, p = np.random.default_rng(seed), length_probs(run, label, target, min_length, max_length, binders)
    lengths_of = lambda m: rng.choice(MAX_LEN + 1, size=m, p=p)
    if rank == 1:
        yield from sample_batches(run, n, lengths_of, label, target, guidance, standard_only, seed, batch_size,
                                  binders=binders)
        return
    known = binders if binders is not None else run.stats.get("binders", {}).get(target, [])
    parents = [b for b in known if min_length <= len(b) <= max_length and (set(b) <= set(RESIDUES) or not
                                                                           standard_only)]
    mutants = (rank if pool == "mutants" else rank // 2) if parents else 0      # per peptide returned
    samples = itertools.repeat([]) if mutants == rank else sample_batches(
        run, n * (rank - mutants), lengths_of, label, target, guidance, standard_only, seed,
        batch_size * (rank - mutants), binders=binders)
    rng_m = np.random.default_rng([seed, 1])
    substitutions = substitution_probs(run.stats.get("composition", np.ones(len(run.vocab.letters))))
    candidates = (batch + (mutated_binders(parents, mutants * min(batch_size, n - start), substitutions, rng_m)
                           if mutants else [])
                  for start, batch in zip(range(0, n, batch_size), samples))
    yield from ranked_batches(run, candidates, n, known, target, binders, seed, batch_size)


def ranked_batches(run: Run, candidates, n: int, known: list, target: str | None, binders: list | None, seed: int,
                   batch_size: int):
    """Best-of-K generation, batch by batch: for every batch of m peptides, the next batch of K m `candidates`
    (the model's samples and the target's known binders mutated by hand until novel, see generate_batches)
    scored for the target by the model (score, the run's mix); the best m that are novel
    (under NOVEL_IDENTITY to every `known` binder) are returned, best first, then, if too few are, the best of
    the rest. The model is a better judge of a peptide than it is a writer of one: on real pairs its best
    quarter of such candidates was more specific to its receptor than its own samples or the mutants (README,
    "On real data"). Which pool serves best differs: it rates its own samples above the mutants (its
    likelihood favours what it writes), which helps a target it has learned and not a receptor it knows only
    by a few binders; the run tunes it."""
    for start, proposals in zip(range(0, n, batch_size), candidates):
        m = min(batch_size, n - start)
        scores = np.array([r["score"] for r in score(run, proposals, target, seed=seed, binders=binders)])
        order = np.argsort(-scores, kind="stable")
        novel = np.zeros(len(proposals), dtype=bool)
        for part in (order[:2 * m], order[2 * m:]):     # the best first: most often enough of them are novel
            novel[part] = best_identity([proposals[i] for i in part], known) < NOVEL_IDENTITY if known else True
            if novel.sum() >= m:
                break
        best = [i for i in order if novel[i]][:m]
        yield [proposals[i] for i in best + [i for i in order if not novel[i]][:m - len(best)]]


def variant_batches(run, parent: str, n: int = 100, strength: float = DEFAULT_STRENGTH, label: int = 1,
                    target: str | None = None, seed: int = 0, guidance: float | None = None,
                    standard_only: bool = True, batch_size: int = GENERATE_BATCH, checkpoint: str = "best",
                    device: str = "auto", binders: list | None = None):
    """n variants of a peptide, of its length, batch by batch: it is noised to the step that matches
    `strength` (0: the parent itself; 1: pure noise, as plain sampling) and denoised under the condition
    (`binders`: as generate_batches)."""
    run = as_run(run, checkpoint, device)
    binders = None if binders is None else check_binders(run, binders)
    if not 0 <= strength <= 1:
        raise DataError(f"strength must lie in [0, 1] (0: the parent unchanged, 1: from pure noise), not {strength}")
    seq = check_seed_peptide(run, parent, "parent", standard_only)
    yield from sample_batches(run, n, lambda m: np.full(m, len(seq)), label, target, guidance, standard_only, seed,
                              batch_size, torch.from_numpy(run.vocab.encode([seq])), strength_step(strength, run.diffusion.T),
                              binders=binders)


def template_batches(run, template: str, n: int = 100, label: int = 1, target: str | None = None, seed: int = 0,
                     guidance: float | None = None, standard_only: bool = True, batch_size: int = GENERATE_BATCH,
                     checkpoint: str = "best", device: str = "auto", binders: list | None = None):
    """n peptides that keep a template's residue letters at every reverse step and write where it has x
    (e.g. xxPPxYxx), batch by batch; the template sets their length (`binders`: as generate_batches)."""
    run = as_run(run, checkpoint, device)
    binders = None if binders is None else check_binders(run, binders)
    seq = check_seed_peptide(run, template, "template", standard_only, wildcard="X")
    x0 = torch.from_numpy(run.vocab.encode([seq.replace("X", run.vocab.letters[0])]))  # the letter under X is never seen
    keep = torch.tensor([[c != "X" for c in seq] + [False] * (MAX_LEN - len(seq))])
    yield from sample_batches(run, n, lambda m: np.full(m, len(seq)), label, target, guidance, standard_only, seed,
                              batch_size, x0, keep=keep, binders=binders)


def generate(run, n: int = 100, **options) -> list:
    """generate_batches' peptides as one list (its options: label, target, min_length, max_length, seed, ...)."""
    return [p for batch in generate_batches(run, n, **options) for p in batch]


def generate_variants(run, parent: str, n: int = 100, **options) -> list:
    """variant_batches' peptides as one list (its options: strength, label, target, seed, guidance, ...)."""
    return [p for batch in variant_batches(run, parent, n, **options) for p in batch]


def fill_template(run, template: str, n: int = 100, **options) -> list:
    """template_batches' peptides as one list (its options: label, target, seed, guidance, ...)."""
    return [p for batch in template_batches(run, template, n, **options) for p in batch]


# =============================================================================================
# Scoring: the variational bound of each peptide, and a score for a target against background
# =============================================================================================


DEFAULT_SCORE_DRAWS = 1     # 10,000 peptides (small preset) within a minute on a 2-core CPU; --draws N averages N


def condition_bits(run: Run, peptides: list, label: int, target_id: int, draws: int, seed: int,
                   batch_size: int = 512, refs=None) -> np.ndarray:
    """heldout_bound_nats of each peptide under one condition, in bits (N,), with per-peptide noise.
    Batches hold peptides of similar lengths (fewer PAD columns); the results come back in input order.
    refs (1, R, MAX_LEN): the known binders every peptide reads (see reference_tokens), or None."""
    by_length = np.argsort([len(p) for p in peptides], kind="stable")
    x0 = torch.from_numpy(run.vocab.encode([peptides[i] for i in by_length]))
    n = len(peptides)
    nats = heldout_bound_nats(run.model, run.diffusion, x0, torch.full((n,), label), torch.full((n,), target_id),
                              batch_size=batch_size, n_draws=draws, seed=seed,
                              refs=None if refs is None else refs.expand(n, -1, -1))
    bits = np.empty(n)
    bits[by_length] = nats.double().numpy() / math.log(2)
    return bits


DEFAULT_SCORE_MIX = 1.0     # a run that has not tuned its score ranks by the background ratio alone


def mixed_score(background_bits, any_target_bits, condition_bits, mix: float):
    """The score from a peptide's three bounds (bits): mix x the background ratio (background - condition:
    like the target's binders rather than background) + (1 - mix) x the target ratio (any target -
    condition: like this target's binders rather than any target's). The first tells binders from
    background; the second reads the target, which ranks one receptor's binders above another's."""
    return mix * (background_bits - condition_bits) + (1 - mix) * (any_target_bits - condition_bits)


def run_score_mix(run: Run, mix: float | None = None) -> float:
    """The score's mix: the one asked for; else (None) the run's own, chosen on its validation binders
    (tuning.json); else DEFAULT_SCORE_MIX."""
    return float(run.tuning.get("score_mix", DEFAULT_SCORE_MIX)) if mix is None else mix


def score(run, peptides, target: str | None = None, label: int = 1, draws: int = DEFAULT_SCORE_DRAWS,
          seed: int = 0, mix: float | None = None, batch_size: int = 512, checkpoint: str = "best",
          device: str = "auto", binders: list | None = None) -> list:
    """How much more the model believes each peptide for `target` (label 1) than otherwise, in bits: the
    variational bound under background (label 0) and under any target minus the bound under the target,
    mixed by `mix` (mixed_score; None: the run's own mix, chosen on its validation binders, tuning.json).
    Without a target the score is the background ratio of "any target". All bounds use the same draws of
    the noise (`draws` of them). Higher means more like the target's binders; a peptide's score depends
    only on it, the run and the seed. `run` is a Run or a run directory. A run trained with references reads
    the target's known binders under the condition: `binders` in place of its training binders, or, with no
    target, a receptor's it never saw; every peptide reads the same ones (drawn from the seed). Returns one
    dict per peptide, in order: peptide, score, condition_bits, background_bits, any_target_bits, length."""
    run = as_run(run, checkpoint, device)
    binders = None if binders is None else check_binders(run, binders)
    if label != 1:
        raise DataError(f"the score compares a condition with background (label 0), so its label is 1, not {label}")
    if draws < 1:
        raise DataError(f"draws must be 1 or more, not {draws}")
    mix = run_score_mix(run, mix)
    if not 0 <= mix <= 1:
        raise DataError(f"the score's mix must lie in [0, 1] (1: background ratio only, 0: target ratio only), "
                        f"not {mix}")
    target_id = check_condition(run, label, target, binders)
    peptides = [p.strip().upper() for p in peptides]
    problems = [(i + 1, p, why) for i, p in enumerate(peptides) if (why := peptide_problem(p, run.vocab.letters))]
    if problems:
        raise DataError(f"{len(problems)} of {len(peptides)} peptides cannot be scored:\n"
                        + "\n".join(f"  peptide {i} '{p}': {why}" for i, p, why in problems[:20])
                        + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    if not peptides:
        return []
    bits = lambda label, target_id, refs=None: condition_bits(run, peptides, label, target_id, draws, seed,
                                                              batch_size, refs)
    refs = score_references(run, target, binders, seed)
    targeted = target_id != UNKNOWN_TARGET or refs is not None
    any_target = bits(1, UNKNOWN_TARGET)
    cond = bits(1, target_id, refs) if targeted else any_target
    background = bits(0, UNKNOWN_TARGET)
    scores = mixed_score(background, any_target, cond, mix if targeted else 1.0)
    return [{"peptide": p, "score": x, "condition_bits": c, "background_bits": b, "any_target_bits": a,
             "length": len(p)}
            for p, x, c, b, a in zip(peptides, scores.tolist(), cond.tolist(), background.tolist(),
                                     any_target.tolist())]


SCORE_COLUMNS = ("peptide", "score", "condition_bits", "background_bits", "any_target_bits", "length")


def format_scores(results: list, ranked: bool = False) -> str:
    """score()'s results as a tab-separated table with a header, in input order or best first. A row
    with a `skipped` reason (a bad input line) has empty figures and the reason in a last column."""
    notes = any("skipped" in r for r in results)
    rows = sorted(results, key=lambda r: r.get("score", -math.inf), reverse=True) if ranked else results
    return "\n".join([score_header(notes)] + [score_line(r, notes) for r in rows])


def score_header(notes: bool) -> str:
    """The header of format_scores' table; `notes`: whether it has the `skipped` column."""
    return "\t".join(SCORE_COLUMNS + (("skipped",) if notes else ()))


def score_line(result: dict, notes: bool) -> str:
    """One row of format_scores' table (the command line prints them batch by batch, under one header)."""
    if "skipped" in result:
        return "\t".join([result["peptide"]] + [""] * (len(SCORE_COLUMNS) - 1) + [result["skipped"]])
    figures = [f"{result[column]:.3f}" for column in SCORE_COLUMNS[1:-1]]       # score and the bits behind it
    return "\t".join([result["peptide"], *figures, str(result["length"])] + ([""] if notes else []))


# =============================================================================================
# Tuning: what a run sets for itself on its validation split, and train(): training, then tuning
# =============================================================================================
#
# No fixed guidance or score serves every dataset (the demo's motif targets and real receptors want other
# ones), so after training a run chooses its own on its held-out binders and records the choice and the
# figures behind it in tuning.json; generate, score and the notebook use them unless told otherwise.

GUIDANCE_GRID = (0.0, 0.5, 1.0, 2.0, 3.0)
TUNE_PEPTIDES = 80          # made per validation target at each guidance; the first TUNE_KEEP novel ones are judged
TUNE_KEEP = 60
TUNE_TARGETS = 40           # validation targets used at most: those with the most validation binders
MIN_TUNE_TARGETS = 3        # fewer targets with validation binders: nothing to tune on
MIN_NOVEL, MIN_UNIQUE = 0.9, 0.95      # a guidance whose peptides copy or repeat more is not a candidate
SCORE_MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
TUNING_VERSION = 3          # a run tuned by another version of the sampler or the choice tunes itself again


def tuning_targets(validation: dict) -> list:
    """The validation targets a run tunes on: those with held-out binders, most binders first."""
    held = validation["binders"]
    return sorted(held, key=lambda t: (-len(held[t]), t))[:TUNE_TARGETS]


def pooled_composition(by_target: dict, targets: list, vocab: Vocab) -> np.ndarray:
    """The residue composition of the targets' peptides, each target weighted alike."""
    comps = []
    for t in targets:
        counts = letter_counts(vocab.encode(by_target[t]), np.zeros(len(by_target[t])), 1, len(vocab.letters))[0]
        comps.append(counts / max(counts.sum(), 1))
    return np.mean(comps, axis=0)


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits: 0 for equal distributions, 1 for disjoint ones."""
    p, q = np.asarray(p, float) / np.sum(p), np.asarray(q, float) / np.sum(q)
    m = (p + q) / 2
    kl = lambda a: float(np.sum(a[a > 0] * np.log2(a[a > 0] / m[a > 0])))
    return (kl(p) + kl(q)) / 2


def guidance_figures(run: Run, guidance: float, validation: dict, targets: list, seed: int,
                     by_binders: bool = False, rank: int = 1, pool: str = POOLS[0]) -> dict:
    """How the run's peptides at this guidance serve its validation targets: their specificity to the targets'
    held-out binders at matched novelty (the first TUNE_KEEP novel ones of TUNE_PEPTIDES; see specificity),
    per target and on average; the fraction of them that is novel and unique; and the JS distance of their
    composition from the targets' training binders' (pooled, targets weighted alike). by_binders: each target
    given only by its training binders, as a receptor the run never saw is (a run that reads references).
    rank, pool: the best of that many candidates per peptide, from that pool (generate_batches)."""
    trained, made, kept, novel = validation["trained"], {}, {}, []
    for t in targets:
        condition = dict(binders=trained[t]) if by_binders else dict(target=t)
        made[t] = generate(run, TUNE_PEPTIDES, guidance=guidance, seed=seed, rank=rank, pool=pool, **condition)
        kept[t], fraction = novel_peptides(made[t], trained[t], TUNE_KEEP)
        novel.append(fraction)
    per_target = specificity(kept, validation["binders"])
    samples = pooled_composition({t: k or made[t] for t, k in kept.items()}, targets, run.vocab)
    return {"guidance": guidance, "rank": rank, "pool": pool, "specificity": float(np.mean(list(per_target.values()))),
            "per_target": per_target,
            "novel": float(np.mean(novel)), "unique": float(np.mean([len(set(m)) / len(m) for m in made.values()])),
            "composition_js": js_divergence(samples, pooled_composition(trained, targets, run.vocab))}


def guidance_guard(figures: dict, composition_limit: float) -> str | None:
    """Why a guidance's peptides (guidance_figures) are not a candidate, or None: they copy the training binders
    (under MIN_NOVEL novel), repeat themselves (under MIN_UNIQUE unique), or drift in composition farther from
    the targets' binders than the binders' own held-out peptides are (composition_limit)."""
    if figures["novel"] < MIN_NOVEL:
        return f"{figures['novel']:.0%} novel"
    if figures["unique"] < MIN_UNIQUE:
        return f"{figures['unique']:.0%} unique"
    if figures["composition_js"] > composition_limit:
        return f"composition JS {figures['composition_js']:.4f} > {composition_limit:.4f}"
    return None


def choose_guidance(figures: list, composition_limit: float) -> tuple[float, str]:
    """(guidance, why) from guidance_figures over the grid: of the guidances that pass guidance_guard, the least
    one whose specificity is within 2 SE of the best one's (paired over targets): more guidance is taken only
    when it is measurably more specific."""
    refused = {f["guidance"]: why for f in figures if (why := guidance_guard(f, composition_limit))}
    ok = [f for f in figures if f["guidance"] not in refused]
    left_out = "; left out: " + ", ".join(f"{g:g} ({why})" for g, why in refused.items()) if refused else ""
    if not ok:
        return DEFAULT_GUIDANCE, "no guidance kept its peptides novel, unique and true to their binders' composition" \
            + left_out
    best = max(ok, key=lambda f: f["specificity"])
    for f in sorted(ok, key=lambda f: f["guidance"]):
        gap, se = paired_gap(best, f)
        if gap <= 2 * se:
            break
    return f["guidance"], (f"specificity {f['specificity']:.3f} on the validation binders, within 2 SE of the most "
                           f"specific candidate ({best['guidance']:g}: {best['specificity']:.3f}){left_out}")


def paired_gap(a: dict, b: dict) -> tuple[float, float]:
    """(mean, SE) over targets of a's specificity minus b's (guidance_figures), paired by target."""
    gap = np.array([a["per_target"][t] - b["per_target"][t] for t in a["per_target"]])
    return float(gap.mean()), float(gap.std(ddof=1) / math.sqrt(len(gap))) if len(gap) > 1 else 0.0


def tune_guidance(run: Run, validation: dict, seed: int = 0, by_binders: bool = False) -> dict:
    """The guidance that serves the run's validation targets best (choose_guidance over GUIDANCE_GRID), with
    the figures behind the choice, then whether to rank RANK_POOL candidates per peptide at that guidance, and
    from which pool (choose_rank); DEFAULT_GUIDANCE and no ranking when fewer than MIN_TUNE_TARGETS targets
    have validation binders. by_binders: for the targets given only by their known binders (guidance_figures)."""
    targets = tuning_targets(validation)
    if len(targets) < MIN_TUNE_TARGETS:
        return {"guidance": DEFAULT_GUIDANCE, "why": f"only {len(targets)} target(s) have held-out binders (at least "
                f"{MIN_TUNE_TARGETS} are needed to tune on): guidance stays {DEFAULT_GUIDANCE:g}", "grid": [],
                "rank": 1, "pool": POOLS[0], "rank_why": "nothing to tune on", "rank_grid": []}
    figures = [guidance_figures(run, g, validation, targets, seed, by_binders) for g in GUIDANCE_GRID]
    limit = js_divergence(pooled_composition(validation["binders"], targets, run.vocab),
                    pooled_composition(validation["trained"], targets, run.vocab))
    guidance, why = choose_guidance(figures, limit)
    plain = next(f for f in figures if f["guidance"] == guidance)
    ranked = [guidance_figures(run, guidance, validation, targets, seed, by_binders, RANK_POOL, pool)
              for pool in POOLS]
    rank, pool, rank_why = choose_rank(plain, ranked, limit)
    return {"guidance": guidance, "why": why, "targets": len(targets), "composition_limit": limit, "grid": figures,
            "rank": rank, "pool": pool, "rank_why": rank_why, "rank_grid": ranked}


def choose_rank(plain: dict, ranked: list, composition_limit: float) -> tuple[int, str, str]:
    """(rank, pool, why): of the ranked peptides (guidance_figures with rank RANK_POOL, one per pool) that pass
    guidance_guard, the most specific, if it is more specific than the plain samples by more than 2 SE (paired
    over targets); else rank 1."""
    said, ok = [], []
    for f in ranked:
        gap, se = paired_gap(f, plain)
        refused = guidance_guard(f, composition_limit)
        said.append(f"{f['pool']} {f['specificity']:.3f} ({gap:+.3f} ± {se:.3f}{'; ' + refused if refused else ''})")
        if not refused and gap > 2 * se:
            ok.append(f)
    why = (f"the best 1 of {RANK_POOL} by the model's score, specificity against {plain['specificity']:.3f} "
           f"sampled: " + ", ".join(said))
    if not ok:
        return 1, POOLS[0], why + "; none better by 2 SE within the guards"
    best = max(ok, key=lambda f: f["specificity"])
    return best["rank"], best["pool"], why


def tune_score_mix(run: Run, validation: dict, seed: int = 0) -> dict:
    """The score's mix (mixed_score) that ranks the validation binders best: per target, its held-out binders
    against the other targets' and against held-out background, AUROC averaged over targets (weighted by
    binders) and over the two sets of negatives, for each of SCORE_MIXES. DEFAULT_SCORE_MIX without
    validation binders."""
    held, trained = validation["binders"], validation["trained"]
    targets = tuning_targets(validation)
    if not targets:
        return {"score_mix": DEFAULT_SCORE_MIX, "why": "no held-out binders to tune on", "grid": []}
    peptides = sorted({p for t in targets for p in held[t]} | set(validation["background"]))
    bits = lambda label, target: condition_bits(run, peptides, label, run.vocab.target_id(target), 1, seed)
    background, any_target = bits(0, None), bits(1, None)
    is_background = np.isin(peptides, validation["background"])
    sums, weights = np.zeros((len(SCORE_MIXES), 2)), np.zeros(2)
    for t in targets:
        cond, known = bits(1, t), set(held[t]) | set(trained[t])
        positive = np.isin(peptides, held[t])
        others = ~positive & ~is_background & ~np.isin(peptides, list(known))
        for k, mix in enumerate(SCORE_MIXES):
            values = mixed_score(background, any_target, cond, mix)
            for j, negative in enumerate((others, is_background)):
                if negative.any():
                    sums[k, j] += positive.sum() * auroc_wins(values[positive], values[negative]).mean()
        weights += [positive.sum() * others.any(), positive.sum() * is_background.any()]
    auroc = sums / np.maximum(weights, 1)
    used = weights > 0
    criterion = auroc[:, used].mean(1)
    best = int(np.argmax(criterion))
    return {"score_mix": SCORE_MIXES[best], "why": "the best mean AUROC against other targets' and background held-out "
            "peptides", "targets": len(targets),
            "grid": [{"mix": m, "auroc_other_targets": auroc[k, 0] if used[0] else None,
                      "auroc_background": auroc[k, 1] if used[1] else None} for k, m in enumerate(SCORE_MIXES)]}


def tune_run(run_dir, validation: dict, seed: int = 0, device: str = "auto") -> dict:
    """The run chooses its score's mix, then its guidance and whether to rank, on its validation split
    (tune_score_mix, tune_guidance) with the weights it samples with (best.pt), and writes them to tuning.json;
    a run already tuned at that checkpoint by this version (TUNING_VERSION) keeps its tuning."""
    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir)
    step = load_checkpoint(path)["step"]
    done = read_tuning(run_dir)
    if (done.get("step"), done.get("checkpoint"), done.get("version")) == (step, path.name, TUNING_VERSION):
        return done
    run = load_run(run_dir, device=device)
    t0 = time.time()
    mix = tune_score_mix(run, validation, seed)
    run.tuning = {"score_mix": mix["score_mix"]}        # what ranked candidates are scored with (choose_rank)
    tuning = {"version": TUNING_VERSION, "checkpoint": path.name, "step": step, **tune_guidance(run, validation, seed),
              "score_mix": mix["score_mix"], "score_why": mix["why"], "score_grid": mix["grid"]}
    if run.cfg.references:              # a receptor given only by its known binders: a guidance of its own
        by_binders = tune_guidance(run, validation, seed, by_binders=True)
        tuning.update({"binders_" + k: by_binders[k]
                       for k in ("guidance", "why", "grid", "rank", "pool", "rank_why", "rank_grid")})
    tuning["seconds"] = round(time.time() - t0, 1)
    write_json(run_dir / TUNING_FILE, tuning)
    given = (f"; for a receptor given by its known binders, guidance {tuning['binders_guidance']:g} "
             f"({tuning['binders_why']}), rank {tuning['binders_rank']} {tuning['binders_pool']} "
             f"({tuning['binders_rank_why']})"
             if "binders_guidance" in tuning else "")
    log(f"{run_dir}: tuned on {tuning.get('targets', 0)} validation target(s): guidance {tuning['guidance']:g} "
        f"({tuning['why']}); rank {tuning['rank']} {tuning['pool']} ({tuning['rank_why']}); score mix "
        f"{tuning['score_mix']:g}{given}")
    return tuning


def train(cfg: Config, run_dir, resume: bool = False, skip_invalid: bool = False, progress: bool = True,
          verbose: bool = False, on_step=None) -> dict:
    """Train (or resume) a run in run_dir, then let it tune itself on its validation split (tune_run). Returns
    a summary dict, with the tuning."""
    trainer = Trainer(cfg, run_dir, resume=resume, skip_invalid=skip_invalid)
    if verbose:
        log(f"{trainer.run_dir}: preset {trainer.cfg.preset}, {count_params(trainer.model):,} parameters, "
            f"{len(trainer.train_data):,} training / {len(trainer.val_data):,} held-out rows (label-1 rows "
            f"x{trainer.cfg.label1_repeat} per epoch), "
            f"{trainer.steps_per_epoch} steps per epoch, device {trainer.device}"
            f"{', ' + str(trainer.amp).replace('torch.', '') if trainer.amp else ''}"
            f"{', one CUDA graph a step' if trainer.graph_step is not None else ''}")
    summary = trainer.run(progress=progress, verbose=verbose, on_step=RunTimer(trainer, then=on_step))
    if trainer.is_main:
        summary["tuning"] = tune_run(trainer.run_dir, trainer.validation, trainer.cfg.seed, device=trainer.cfg.device)
    return summary


# =============================================================================================
# Command line
# =============================================================================================


# Bounds of the commands' numbers: a request past them would run for days or fill the memory; a typo, likely.
MAX_PEPTIDES = 10_000_000           # generate -n: written in batches as they are made
MAX_EVAL_SAMPLES = 100_000          # evaluate -n, per condition: the report holds them all
MAX_DRAWS = 1_000                   # score --draws, evaluate --noise-draws: each draw runs every diffusion step
MAX_SEED = 2**32 - 1                # numpy's and torch's seeds both take it; training's seed has this range
MAX_NUM_TARGETS = 100_000


def number_in(kind: type, low, high, note: str = ""):
    """An argparse type: a number of `kind` (int or float) from low to high, both included. Anything else
    is argparse's error naming the option and this range (exit 2, no traceback); NaN and inf never pass."""
    allowed = f"{'a whole number' if kind is int else 'a number'} from {low:,} to {high:,}{note}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number written in digits" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: it must be {allowed}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number: it must be {allowed}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {allowed}")
        return value
    return parse


SEED = number_in(int, 0, MAX_SEED)
GUIDANCE = number_in(float, -1, 20, " (0: plain conditional, -1: unconditional)")


def run_dir_arg(args) -> Path:
    return run_dir_for(args.run_name, args.checkpoint_dir)


def add_run_args(p, required: bool = True):
    """--run-name and --checkpoint-dir: every command that reads or writes a run takes them."""
    p.add_argument("--run-name", required=required, default=None,
                   help="the run's folder name" + ("" if required else " (default: the preset's name)"))
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where runs live (default: checkpoints/)")


def device_arg(text: str) -> str:
    """--device's value, checked as the Config checks it."""
    if re.fullmatch(DEVICE_PATTERN, text) is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not one of {DEVICES}")
    return text


def add_binders_arg(p):
    p.add_argument("--binders", default=None, metavar="FILE",
                   help="known binders of the target, one peptide per line, read in place of its training binders; "
                        "without --target, a receptor the run never saw (a run trained with --references)")


def add_model_args(p):
    """--checkpoint and --device: which weights of a run to use, and where."""
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto", type=device_arg, help=f"one of {DEVICES} (default auto)")


TRAIN_FLAGS = ("epochs", "max_steps", "batch_size", "lr", "seed", "device", "save_every_minutes", "dim", "n_layers",
               "n_heads", "n_steps", "hybrid_coeff", "warmup", "cond_drop", "label1_repeat", "dropout", "rotary",
               "termini", "ema_decay", "data", "compile", "precision", "cuda_graph", "references", "id_drop",
               "reference_attention", "noise")


def cmd_train(args):
    given = {k: getattr(args, k) for k in TRAIN_FLAGS}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size and world > 1:                   # under torchrun --batch-size is per process
        given["batch_size"] = args.batch_size * world
    run_dir = run_dir_for(args.run_name or args.preset or "small", args.checkpoint_dir)
    saved = saved_config(run_dir) if args.resume else None
    cfg = (resumed_config(run_dir, saved, args.preset, given) if saved else
           make_config(args.preset or "small", **given))
    require_gpu(cfg.preset, allow_cpu=cfg.device == "cpu")
    try:
        summary = train(cfg, run_dir, resume=args.resume, skip_invalid=args.skip_invalid,
                        progress=not args.no_progress, verbose=args.verbose)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if summary and int(os.environ.get("RANK", "0")) == 0:
        best = (f"held-out binders {summary['best']:.4f} bits per residue" if summary["best_by"] == "binder_bits"
                else f"held-out loss {summary['best']:.4f}")
        log(f"done: {summary['step']} steps, best.pt: {best}; "
            f"checkpoints and convergence.png in {run_dir}")


def cmd_generate(args):
    run = load_run(run_dir_arg(args), checkpoint=args.checkpoint, device=args.device)
    condition = dict(label=args.label, target=args.target, seed=args.seed, guidance=args.guidance,
                     standard_only=not args.allow_rare, binders=read_binders(run, args.binders))
    if (args.parent or args.template) and (args.min_length, args.max_length) != (None, None):
        raise DataError("--min-length and --max-length go with plain sampling: variants and filled templates keep "
                        "the length of their peptide")
    if args.strength is not None and args.parent is None:
        raise DataError("--strength goes with --from PEPTIDE (how far its variants may move)")
    if args.verbose and args.parent is None:
        raise DataError("--verbose adds each variant's identity to its parent: it goes with --from")
    if (args.rank is not None or args.pool is not None) and (args.parent or args.template):
        raise DataError("--rank and --pool go with plain sampling: variants and filled templates are the model's "
                        "samples")
    if args.parent is not None:
        strength = DEFAULT_STRENGTH if args.strength is None else args.strength
        batches = variant_batches(run, args.parent, args.n, strength, **condition)
    elif args.template is not None:
        batches = template_batches(run, args.template, args.n, **condition)
    else:
        batches = generate_batches(run, args.n, min_length=args.min_length or MIN_LEN,
                                   max_length=args.max_length or MAX_LEN, rank=args.rank,
                                   pool=args.pool, **condition)
    write_batches(batches, args.n, args.parent.strip().upper() if args.verbose else None)


def read_binders(run: Run, path) -> list | None:
    """--binders FILE: known binders, one peptide per line (or FASTA, or CSV with a sequence column); each bad
    line is named with its problem, and an empty file is an error. None without the flag."""
    if path is None:
        return None
    if not run.cfg.references:
        check_binders(run, [])                          # says the run reads none, and how to train one that does
    name, entries = read_peptides(path)
    n, problems = peptide_problems(entries, run.vocab.letters)
    if problems:
        raise DataError(summarize_problems(name, problems))
    if not n:
        raise DataError(f"{name}: no peptides (--binders needs at least one known binder)")
    return [seq for _, seq in entries]


def write_batches(batches, n: int, parent: str | None = None):
    """Peptides on stdout, one a line, each batch as soon as it is made (see write_lines). With a parent, a
    second column gives each one's identity to it, and their mean goes to stderr at the end."""
    if parent is None:
        write_lines("", batches, n, GENERATE_BATCH)
        return
    total_identity = 0.0

    def with_identities():
        nonlocal total_identity
        for batch in batches:
            shared = [identity(p, parent) for p in batch]
            total_identity += sum(shared)
            yield [f"{p}\t{same:.3f}" for p, same in zip(batch, shared)]
    if write_lines("peptide\tidentity_to_parent", with_identities(), n, GENERATE_BATCH):
        log(f"mean identity to {parent}: {total_identity / n:.3f}")


def write_lines(header: str, batches, n: int, batch_size: int) -> bool:
    """A header line (none if '') and then n lines on stdout, each batch (a list of lines) as soon as it is
    made, with a progress bar on stderr when there is more than one batch of batch_size, so the first lines
    can be read or piped on at once. A reader that stops early (... | head) ends the command quietly: False
    then, True once every line is out."""
    from tqdm.auto import tqdm
    batch = next(batches, [])                           # a bad request fails here, before any output
    try:
        sys.stdout.write(header + "\n" if header else "")
        with tqdm(total=n, unit=" peptides", file=sys.stderr, disable=n <= batch_size) as bar:
            while batch:
                sys.stdout.write("".join(line + "\n" for line in batch))
                sys.stdout.flush()
                bar.update(len(batch))
                batch = next(batches, [])
    except BrokenPipeError:                             # the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())     # no second error at exit
        return False
    return True


SCORE_BATCH = 4096      # peptides the command line scores together; it prints each batch's rows as they come


def cmd_score(args):
    run = load_run(run_dir_arg(args), checkpoint=args.checkpoint, device=args.device)
    check_condition(run, 1, args.target)                # an unknown target fails before the input is read
    binders = read_binders(run, args.binders)
    name = peptide_input_name(args.input)
    if args.input in (None, "-"):                       # standard input cannot be read twice: keep its entries
        kept = list(iter_peptides(args.input))
        read_entries = lambda: iter(kept)
    else:                                               # a file is read twice, an entry at a time: flat memory
        read_entries = lambda: iter_peptides(args.input)
    n, problems = peptide_problems(read_entries(), run.vocab.letters)    # all of them, before any output
    if not n:
        raise DataError(f"{name}: no peptides")
    if problems and not args.skip_invalid:
        raise DataError(summarize_problems(name, problems)
                        + "\nFix the input, or pass --skip-invalid to score the others (bad lines get a row saying why).")
    score_peptides = lambda peptides: score(run, peptides, args.target, args.label, args.draws, args.seed, args.mix,
                                            binders=binders)
    notes = bool(problems)                              # the table has a `skipped` column
    batches = scored_batches(read_entries(), dict(problems), score_peptides)
    write_lines(score_header(notes), ([score_line(r, notes) for r in batch] for batch in batches), n, SCORE_BATCH)
    if problems:
        log(f"skipped {len(problems)} of {n} peptides (--skip-invalid); their rows say why")


def peptide_problems(entries, letters: str) -> tuple[int, list]:
    """How many (line, peptide) entries there are, and (line, why) for each that is not a peptide of these
    residue letters; one entry is held at a time."""
    count, problems = 0, []
    for count, (line, seq) in enumerate(entries, start=1):
        if why := peptide_problem(seq, letters):
            problems.append((line, why))
    return count, problems


def scored_batches(entries, bad: dict, score_peptides):
    """score_peptides' results for the (line, peptide) entries, SCORE_BATCH at a time in input order; a
    line in `bad` (line -> why) gets a row saying why instead. A peptide's score does not depend on the
    batch it is in: its noise is drawn from the seed and the peptide."""
    for batch in iter(lambda: list(itertools.islice(entries, SCORE_BATCH)), []):
        results = iter(score_peptides([seq for line, seq in batch if line not in bad]))
        yield [{"peptide": seq, "skipped": f"line {line}: {bad[line]}"} if line in bad else next(results)
               for line, seq in batch]


def cmd_verify_data(args):
    ok, report = verify_data(args.path)
    print(report)
    sys.exit(0 if ok else 1)


def cmd_presets(args):
    vocab = Vocab(RESIDUES + RARE_RESIDUES[: max(0, args.vocab_size - 1 - len(RESIDUES))],
                  [f"T{i}" for i in range(args.num_targets)])
    out = {}
    for name in PRESETS:
        cfg = make_config(name)
        out[name] = {**asdict(cfg), "params": count_params(build_model(cfg, vocab))}
    print(json.dumps(out, indent=1))


TRAIN_HELP = {"--max-steps": "stop after this many steps even if epochs remain (0, the preset's default: no "
                             "limit, the epochs decide)",
             "--references": "known binders of its target each row reads, drawn from the target's other training "
                             "binders (default 0: the target id alone); a run trained with them takes --binders",
             "--id-drop": "with --references: how often the target id is hidden, so they alone tell the target "
                          "(default 0.5, the setting measured on real pairs; 1: references only)"}


def add_train_parser(sub):
    p = sub.add_parser("train", help="train or resume a model")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="model size (default: small, or the run's own preset with --resume)")
    p.add_argument("--data", default=None, help="CSV (label,target,sequence[,source]); default: the demo data")
    add_run_args(p, required=False)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-name from its last.pt")
    p.add_argument("--skip-invalid", action="store_true", help="train on the valid rows, reporting the rest")
    for flag, typ in (("--epochs", int), ("--max-steps", int), ("--lr", float),
                      ("--seed", int), ("--save-every-minutes", float), ("--dim", int), ("--n-layers", int),
                      ("--n-heads", int), ("--n-steps", int), ("--hybrid-coeff", float), ("--warmup", int),
                      ("--cond-drop", float), ("--label1-repeat", int), ("--dropout", float), ("--ema-decay", float),
                      ("--references", int), ("--id-drop", float)):
        p.add_argument(flag, type=typ, default=None, help=TRAIN_HELP.get(flag, "override the preset"))
    p.add_argument("--rotary", action=argparse.BooleanOptionalAction, default=None,
                   help="rotary attention (default: on)")
    p.add_argument("--termini", action=argparse.BooleanOptionalAction, default=None,
                   help="embed each residue's distance from both peptide ends (default: on)")
    p.add_argument("--reference-attention", action=argparse.BooleanOptionalAction, default=None,
                   help="with --references: the peptide's residues also attend to the known binders' residues "
                        "(default: off)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="override the preset's batch (256). Under torchrun with N processes each process takes "
                        "batch/N rows of every global batch; an explicit --batch-size is per process.")
    p.add_argument("--device", default=None, type=device_arg, help=f"one of {DEVICES} (default auto)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (CUDA; slower start)")
    p.add_argument("--noise", default=None, choices=list(NOISES),
                   help="the forward process: uniform (default; residues turn into random letters) or absorbing "
                        "(residues turn into a MASK, as masked diffusion)")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="the step's precision on a GPU (default auto: bf16 on compute capability 8.0+, fp16 with a "
                        "gradient scaler before; fp32: no autocast). The CPU trains in fp32.")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the training step as one CUDA graph (one GPU, no DDP or --compile; default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="print a line per epoch")
    p.set_defaults(func=cmd_train)


def add_generate_parser(sub):
    p = sub.add_parser("generate", help="print generated peptides, one per line")
    add_run_args(p)
    p.add_argument("-n", type=number_in(int, 1, MAX_PEPTIDES), default=100,
                   help=f"how many peptides (default 100, at most {MAX_PEPTIDES:,}); printed as they are made")
    p.add_argument("--label", type=int, default=1, choices=[0, 1], help="1 interacting (default), 0 background")
    p.add_argument("--target", default=None, help="target accession (label 1); default: any target")
    add_binders_arg(p)
    p.add_argument("--min-length", type=number_in(int, MIN_LEN, MAX_LEN), default=None,
                   help=f"plain sampling: shortest length (default {MIN_LEN})")
    p.add_argument("--max-length", type=number_in(int, MIN_LEN, MAX_LEN), default=None,
                   help=f"plain sampling: longest length (default {MAX_LEN})")
    p.add_argument("--guidance", type=GUIDANCE, default=None,
                   help="classifier-free guidance S (0 = plain conditional); default: for a target, the run's own, "
                        f"tuned on its validation binders (tuning.json); without a target, {DEFAULT_GUIDANCE:g}")
    p.add_argument("--rank", type=number_in(int, 1, MAX_RANK), default=None,
                   help="plain sampling for a target: K candidates per peptide, the best by the model's score "
                        "printed, best first; 1: the model's samples; default: the run's own choice (tuning.json)")
    p.add_argument("--pool", default=None, choices=list(POOLS),
                   help="with --rank: the candidates, half the model's samples and half the target's known binders "
                        "mutated by hand until novel (mixed), or only these (mutants); default: the run's own")
    p.add_argument("--seed", type=SEED, default=0)
    add_model_args(p)
    p.add_argument("--allow-rare", action="store_true", help="allow X/B/Z/U... in outputs")
    seed_peptide = p.add_mutually_exclusive_group()
    seed_peptide.add_argument("--from", dest="parent", default=None, metavar="PEPTIDE",
                              help="write variants of this peptide (of its length)")
    seed_peptide.add_argument("--template", default=None,
                              help="keep its residue letters, write the positions marked x (e.g. xxPPxYxx)")
    p.add_argument("--strength", type=number_in(float, 0, 1), default=None,
                   help=f"with --from: how far variants may move, 0 (the parent) to 1 (from pure noise); "
                        f"default {DEFAULT_STRENGTH}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="with --from: a second column with each variant's identity to the parent")
    p.set_defaults(func=cmd_generate)


def add_score_parser(sub):
    p = sub.add_parser("score", help="score peptides for a target: bits the target adds over background and over "
                                     "any target")
    add_run_args(p)
    p.add_argument("--target", default=None, help="target accession (default: any target)")
    add_binders_arg(p)
    p.add_argument("--label", type=int, default=1, choices=[1],
                   help="the condition's label (1; background is the reference)")
    p.add_argument("--input", default=None, help="one peptide per line, FASTA or CSV with a sequence column "
                                                 "(default: standard input)")
    p.add_argument("--skip-invalid", action="store_true", help="score the valid peptides; bad lines get a row "
                                                                "saying why")
    p.add_argument("--draws", type=number_in(int, 1, MAX_DRAWS), default=DEFAULT_SCORE_DRAWS,
                   help=f"noise draws per peptide (default {DEFAULT_SCORE_DRAWS}; more: steadier, slower)")
    p.add_argument("--mix", type=number_in(float, 0, 1), default=None,
                   help="the score's weight on the background ratio, the rest on the target ratio (default: the "
                        "run's own, chosen on its validation binders)")
    p.add_argument("--seed", type=SEED, default=0)
    add_model_args(p)
    p.set_defaults(func=cmd_score)


def build_parser():
    parser = argparse.ArgumentParser(prog="mimir_core.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_generate_parser(sub)
    add_score_parser(sub)
    p = sub.add_parser("verify-data", help="check a dataset against the contract; exit 0 only if all holds")
    p.add_argument("path", help="CSV or CSV.gz with header label,target,sequence[,source]")
    p.set_defaults(func=cmd_verify_data)
    p = sub.add_parser("presets", help="print each preset's settings and parameter count as JSON")
    p.add_argument("--vocab-size", type=number_in(int, len(RESIDUES) + 1, len(RESIDUES + RARE_RESIDUES) + 1),
                   default=25, help="tokens including PAD (real data: 25)")
    p.add_argument("--num-targets", type=number_in(int, 0, MAX_NUM_TARGETS), default=800)
    p.set_defaults(func=cmd_presets)
    return parser


def run_command(command, args):
    """Run a command's function: a user's error (bad input, a full disk, a failed run) is one line on stderr
    and exit 2, never a traceback; Ctrl-C is exit 130."""
    try:
        command(args)
    except (DataError, NonFiniteLoss, OSError) as e:     # OSError: a disk that is full, read-only, missing
        log(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def main(argv=None):
    args = build_parser().parse_args(argv)
    run_command(args.func, args)


if __name__ == "__main__":
    main()
