"""Mimir: a length-aware conditional discrete-diffusion model (D3PM) that writes short peptides.

One module, read top to bottom in pipeline order:
  config -> data (load, validate, verify-data) -> model -> diffusion -> training -> sampling
  -> evaluation -> plots -> command line (train, generate, score, evaluate, verify-data, presets)

The tools around it are scripts of their own:
  scripts/train.py          the quick-start command, a shim over `mimir_core.py train`
  scripts/build_dataset.py  builds a dataset from protein FASTA files (the real set's recipe)
  scripts/benchmark.py      measures data loading, training steps and sampling on this machine
  scripts/ablation.py       trains and evaluates the small preset with each order lever on or off

The model is an x0-predictor: a bidirectional transformer that sees a noised peptide x_t, the
diffusion step t, an interaction label and a target protein, and predicts the clean peptide x0.
Noise is D3PM's uniform transition over residue letters with a cosine schedule (Austin et al. 2021).
PAD positions are never noised, scored or generated: a peptide's length is chosen first and the
diffusion runs over its residues only.
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
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# =============================================================================================
# Config
# =============================================================================================

MIN_LEN, MAX_LEN = 4, 20            # peptide lengths the product supports; tensors are padded to MAX_LEN
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"   # the 20 standard amino acids, always in the vocabulary
RARE_RESIDUES = "BJOUXZ"            # IUPAC letters that may occur in data (ambiguous / rare residues)
PAD = 0                             # token 0 is padding; residue letters are tokens 1..K
UNKNOWN_TARGET = 0                  # target id 0: no target (background) or "any target" (guidance)
UNKNOWN_LABEL = 2                   # label id 2: "no label", used for classifier-free guidance
REPO_DIR = Path(__file__).resolve().parent
DEMO_DATA = REPO_DIR / "data" / "demo" / "dataset.csv.gz"
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
    cond_drop: float = 0.1          # probability of dropping the condition (classifier-free guidance)
    label1_repeat: int = 8          # each epoch shows every label-1 training row this many times
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


# The guide's presets (all batch 256). Parameter counts with vocab 25 and 800 targets: 839K, 3.9M, 21.5M.
PRESETS = {
    "tiny": dict(dim=32, n_layers=2, n_heads=2, n_steps=10, hybrid_coeff=0.001, lr=2e-3, warmup=20,
                 epochs=2, batch_size=64),
    "small": dict(dim=128, n_layers=3, n_heads=4, n_steps=10, hybrid_coeff=0.0, lr=5e-4, warmup=500,
                  epochs=20),
    "medium": dict(dim=256, n_layers=4, n_heads=4, n_steps=25, hybrid_coeff=0.001, lr=3e-4, warmup=1000,
                   epochs=75),
    "large": dict(dim=512, n_layers=6, n_heads=8, n_steps=35, hybrid_coeff=0.01, lr=1e-4, warmup=2000,
                  epochs=150),
}


# Settings that runs saved before they existed did without; such a run keeps its own behaviour.
LEGACY_SETTINGS = {"rotary": False, "termini": False, "label1_repeat": 1, "ema_decay": 0.0}


def config_from_saved(saved: dict) -> Config:
    """The Config of a saved run (config.json or a checkpoint), older runs included."""
    return Config(**{**LEGACY_SETTINGS, **saved})


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
    "device": ("one of auto, cpu, cuda, cuda:N", lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None),
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


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible")
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


def amp_dtype(device: torch.device):
    """Mixed-precision dtype: bf16 on compute capability >= 8.0 (A100), fp16 before (T4), none on CPU.
    torch.cuda.is_bf16_supported() can say yes on a T4 (emulated, slow), so ask for the capability."""
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast(device: torch.device):
    """Mixed precision (amp_dtype) for the model's forward passes; a no-op on the CPU. Everything after
    the logits (losses, posteriors, sampling) runs in fp32."""
    dtype = amp_dtype(device)
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


def runtime_info(device: str = "auto") -> str:
    """One paragraph on where training will run: GPU name and memory, precision, or a CPU warning."""
    dev = pick_device(device)
    lines = [f"torch {torch.__version__}, python {sys.version.split()[0]}"]
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        precision = {torch.bfloat16: "bf16 mixed precision", torch.float16: "fp16 mixed precision + gradient scaler"}
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                     f"{props.major}.{props.minor} -> {precision[amp_dtype(dev)]}, fused AdamW, TF32 matmuls")
    else:
        lines.append(f"No GPU: training runs on the CPU ({os.cpu_count()} cores) in fp32. Fine for the demo and "
                     f"the tiny preset; for small/medium/large pick a GPU (Colab: Runtime > Change runtime type "
                     f"> T4 GPU, or A100 on Colab Pro).")
    return "\n".join(lines)


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


class DiskError(OSError):
    """A file could not be written (disk full, read-only, no permission); the message says which file
    and what was kept."""


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


class DataError(ValueError):
    """Bad input (a file, a setting). The message names the file and line, or the setting, and the problem."""


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


def label_length_counts(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Length histograms of label 0 and label 1, both over 0..max(MAX_LEN, longest row): rows that break
    the length contract (a file being checked) get counted, not an index error."""
    lengths = np.fromiter(map(len, rows.sequences), dtype=np.int64, count=len(rows.sequences))
    size = max(MAX_LEN, int(lengths.max(initial=0))) + 1
    return tuple(np.bincount(lengths[rows.labels == label], minlength=size) for label in (0, 1))


def subset_rows(rows: Rows, idx) -> Rows:
    idx = np.asarray(idx, dtype=np.int64)
    pick = lambda xs: [xs[i] for i in idx.tolist()]
    return Rows(rows.path, rows.labels[idx], pick(rows.targets), pick(rows.sequences),
                pick(rows.sources) if rows.sources is not None else None, rows.lines[idx])


def split_indices(rows: Rows, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / held-out split by group: the source protein when the file names one (so
    overlapping windows of a protein never straddle the split), else the sequence itself. A group is
    held out when a hash of its key falls below val_fraction; each label gets at least one group."""
    keys = rows.sources if rows.sources is not None else rows.sequences
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


HELDOUT_SUBSET_SEED = 0


def heldout_subset(n: int, max_rows: int) -> np.ndarray:
    """Which of n held-out rows to score when at most max_rows are: a fixed, seeded random subset
    (sorted), the same at every epoch and in every report. Never the first rows: files are grouped
    (build_dataset.py writes label-1 rows, then human, then viral background), so file order would
    leave whole groups out."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(HELDOUT_SUBSET_SEED).choice(n, size=max_rows, replace=False))


def data_stats(rows: Rows, vocab: Vocab) -> dict:
    """What generation and evaluation need from the training data: length counts per label and per
    target, and residue composition."""
    lengths = np.fromiter(map(len, rows.sequences), dtype=np.int64, count=len(rows.sequences))
    by_label = {str(l): np.bincount(lengths[rows.labels == l], minlength=MAX_LEN + 1).tolist() for l in (0, 1)}
    by_target = {}
    for t, n in zip(rows.targets, lengths.tolist()):
        if t:
            by_target.setdefault(t, [0] * (MAX_LEN + 1))[n] += 1
    tokens = vocab.encode(rows.sequences)
    composition = np.bincount(tokens.ravel(), minlength=vocab.size)[1:]
    return {"length_counts": by_label, "target_length_counts": by_target,
            "composition": (composition / composition.sum()).tolist(), "rows": len(rows.sequences)}


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


def read_peptides(path=None) -> tuple[str, list]:
    """Peptides from a file (standard input when path is None or '-'): one per line, FASTA (a first line
    that starts with '>'), or CSV with a `sequence` column (a .csv name, or a first line naming that
    column). Returns (the input's name, [(line, peptide uppercase)] in input order); blank lines are not
    peptides. Nothing is validated here but the layout: see peptide_problem."""
    if path in (None, "-"):
        name, text = "standard input", sys.stdin.read()
    else:
        name = str(path)
        if not Path(path).exists():
            raise DataError(f"{path}: file not found")
        try:
            with _open_text(Path(path)) as f:
                text = f.read()
        except (UnicodeDecodeError, OSError, EOFError) as e:        # OSError: a folder, a broken .gz, ...
            raise DataError(f"{path}: not a readable text file ({e})") from e
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    entries = []
    if first.startswith(">"):                                 # FASTA: a record may span several lines
        for lineno, ln in enumerate(lines, start=1):
            if ln.startswith(">"):
                entries.append((lineno, ""))
            elif ln.strip():
                entries[-1] = (entries[-1][0], entries[-1][1] + ln.strip().upper())
    elif name.lower().endswith((".csv", ".csv.gz")) or "sequence" in [h.strip().lower() for h in first.split(",")]:
        reader = csv.reader(io.StringIO(text))
        header = [h.strip().lower() for h in next(reader, [])]
        if "sequence" not in header:
            raise DataError(f"{name}, line 1: no 'sequence' column in the header {','.join(header) or '(empty)'}")
        col = header.index("sequence")
        for lineno, row in enumerate(reader, start=2):
            if any(c.strip() for c in row):
                entries.append((lineno, row[col].strip().upper() if col < len(row) else ""))
    else:
        entries = [(lineno, ln.strip().upper()) for lineno, ln in enumerate(lines, start=1) if ln.strip()]
    return name, entries


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


def rotary_angles(positions, head_dim: int):
    """e^(i * angle) (..., head_dim / 2) of rotary position embeddings (Su et al. 2021) at integer
    positions (...): rotating each pair of query and key features by an angle proportional to the
    position makes their dot product depend on the offset between two residues only, so a motif learned
    at one offset is recognised at every other."""
    freqs = 10_000 ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions[..., None].float() * freqs
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x, turn):
    """x (..., head_dim) with each pair of neighbouring features turned by `turn` (complex, broadcast over
    (..., head_dim / 2)): one complex product, the cheapest form on the CPU."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * turn).flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask, res: Residues, turn=None):
        """x: residue rows (N, D) or (B, L, D); attn_mask: (B, 1, 1, L), True = attend; turn: each row's
        rotary angles (N or B, L, head_dim / 2), or None for no rotary attention."""
        B, L = res.shape
        D = x.shape[-1]
        qkv = self.qkv(x)
        qk, v = qkv[..., :2 * D], qkv[..., 2 * D:]
        if turn is not None:                            # rotated on residue rows, before the grid
            qk = rotate(qk.unflatten(-1, (2, self.n_heads, -1)), turn[..., None, None, :]).flatten(-3)
        q, k = res.unpack(qk).view(B, L, 2, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
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


class X0Transformer(nn.Module):
    """Predicts logits of x0 over the K residue letters (B, L, K) from (x_t, t, label, target).
    The condition (step + label + target) is added to every position's embedding. Where a residue sits
    enters twice: rotary attention sees the offset between two residues (cfg.rotary), and each residue
    embeds its distance from the N-terminus and, with cfg.termini, from the C-terminus, which is where
    some motifs are anchored (a PDZ ligand ends in its last residue)."""

    def __init__(self, cfg: Config, vocab_size: int, num_targets: int):
        super().__init__()
        self.dim, self.head_dim, self.rotary = cfg.dim, cfg.dim // cfg.n_heads, cfg.rotary
        self.tok_emb = nn.Embedding(vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(MAX_LEN, cfg.dim)                # distance from the N-terminus
        self.cterm_emb = nn.Embedding(MAX_LEN, cfg.dim) if cfg.termini else None   # ... from the C-terminus
        self.label_emb = nn.Embedding(3, cfg.dim)                   # background, interacting, unknown
        self.target_emb = nn.Embedding(num_targets, cfg.dim)        # 0 = unknown / none
        self.time_mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, vocab_size - 1)              # residue letters only: PAD is never predicted
        self.pack_residues = None                                   # None: on the CPU only (see Residues)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, xt, t, label, target_id):
        pad_mask = xt != PAD                                        # (B, L)
        packed = xt.device.type == "cpu" if self.pack_residues is None else self.pack_residues
        res = Residues(pad_mask, packed)
        cond = self.time_mlp(timestep_embedding(t, self.dim)) + self.label_emb(label) + self.target_emb(target_id)
        pos = torch.arange(xt.shape[1], device=xt.device)
        h = self.tok_emb(xt) + self.pos_emb(pos)[None] + cond[:, None, :]
        if self.cterm_emb is not None:                              # residues after this one: (B, L)
            to_cterm = (pad_mask.sum(1, keepdim=True) - 1 - pos[None]).clamp_min(0)
            h = h + self.cterm_emb(to_cterm)
        h = res.pack(h)
        turn = rotary_angles(res.positions(xt.device), self.head_dim) if self.rotary else None
        attn_mask = pad_mask[:, None, None, :]                      # residues never attend to PAD
        for block in self.blocks:
            h = block(h, attn_mask, res, turn)
        return res.unpack(self.head(self.ln_f(h)))                  # (B, L, K); PAD positions hold 0


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =============================================================================================
# Diffusion: D3PM with uniform transitions over residue letters and a cosine schedule
# =============================================================================================


class D3PM:
    """Forward process q(x_t | x_{t-1}) = Cat(x_t; Q_t[x_{t-1}]), Q_t = (1 - beta_t) I + beta_t / K,
    on residue indices 0..K-1 (token - 1). Index 0 of the stacked matrices is the identity, so
    Qbar[t - 1] is defined for every t in 1..T."""

    def __init__(self, num_letters: int, n_steps: int, device="cpu"):
        K, T = num_letters, n_steps
        self.K, self.T = K, T
        s = 0.008                                       # cosine schedule (Nichol & Dhariwal), alpha_bar(T) = 0
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(0.0, 1.0)
        eye, uniform = torch.eye(K, dtype=torch.float64), torch.full((K, K), 1.0 / K, dtype=torch.float64)
        Q = [eye] + [(1 - b) * eye + b * uniform for b in betas]
        Qbar = [eye]
        for t in range(1, T + 1):
            Qbar.append(Qbar[-1] @ Q[t])
        self.betas = betas.float().to(device)
        self.Q = torch.stack(Q).float().to(device)          # (T+1, K, K)
        self.Qbar = torch.stack(Qbar).float().to(device)    # (T+1, K, K)

    def q_probs(self, x0r, t):
        """q(x_t | x0) as probabilities (B, L, K) for residue indices x0r (B, L) and steps t (B,)."""
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
        weights = x0_probs / self.Qbar[t[:, None], :, xtr]                  # p(a | x_t) / Qbar_t[a, x_t]
        return self._bayes(xtr, t, torch.einsum("blk,bkj->blj", weights, self.Qbar[t - 1]))

    def true_posterior(self, xtr, t, x0r):
        """q(x_{t-1} | x_t, x0) for known residues x0r (B, L): posterior() of a one-hot x0, as a gather."""
        return self._bayes(xtr, t, self.Qbar[t[:, None] - 1, x0r])

    def _bayes(self, xtr, t, prev_probs):
        """q(x_{t-1} = j | x_t, .) ∝ q(x_t | x_{t-1} = j) * prev_probs[..., j], prev_probs (B, L, K)."""
        unnorm = self.Q[t[:, None], :, xtr] * prev_probs                   # Q[t][j, x_t] for every j
        return unnorm / unnorm.sum(-1, keepdim=True).clamp_min(1e-30)

    def losses(self, model, x0, label, target_id, generator=None, part=slice(None)):
        """Training losses for a batch of clean tokens x0 (B, L): ce of the x0 prediction and vb, the KL
        between true and predicted posteriors, both averaged over residue positions (PAD excluded).
        `part` picks the rows this process scores: data-parallel ranks draw the noise of the whole batch
        and divide by its residue count, so their summed gradients equal a single process's."""
        n = (x0 != PAD).sum().clamp_min(1)
        t = torch.randint(1, self.T + 1, (x0.shape[0],), device=x0.device, generator=generator)
        xt, xtr = self.q_sample(x0, t, generator)
        x0, xt, xtr, t, label, target_id = (v[part] for v in (x0, xt, xtr, t, label, target_id))
        pad_mask, x0r = x0 != PAD, (x0.long() - 1).clamp_min(0)
        with autocast(x0.device):
            logits = model(xt, t, label, target_id)
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


def sample_categorical(probs, generator=None, uniforms=None):
    """One draw per row of probs (..., K) by the Gumbel-max trick: no host sync, any batch shape.
    `uniforms` (probs' shape, in [0, 1)) replaces the fresh draws: noise fixed in advance."""
    u = torch.rand(probs.shape, device=probs.device, generator=generator) if uniforms is None else uniforms
    u = u.clamp(1e-20, 1.0)
    return (probs.clamp_min(1e-30).log() - (-u.log()).log()).argmax(-1)


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


def build_model(cfg: Config, vocab: Vocab, device) -> X0Transformer:
    torch.manual_seed(cfg.seed)
    return X0Transformer(cfg, vocab.size, vocab.num_targets).to(device)


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


class DeviceData:
    """The tokenized dataset resident on the training device: a batch is an index gather."""

    def __init__(self, rows: Rows, vocab: Vocab, idx, device):
        idx = np.asarray(idx, dtype=np.int64)
        self.x0 = torch.from_numpy(vocab.encode([rows.sequences[i] for i in idx.tolist()])).to(device)
        self.label = torch.from_numpy(rows.labels[idx]).to(device)
        self.target_id = torch.from_numpy(vocab.target_ids([rows.targets[i] for i in idx.tolist()])).to(device)

    def __len__(self):
        return self.x0.shape[0]

    def batch(self, idx):
        return self.x0[idx].long(), self.label[idx], self.target_id[idx]


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
        x0, label, target_id = data.batch(rows[start:start + batch_size])
        ce, vb = diffusion.losses(model, x0, label, target_id, generator=g)
        w = (x0 != PAD).sum()
        sums += torch.stack([ce * w, vb * w, w.float()])
    model.train(was_training)
    ce, vb, w = sums.tolist()
    ce, vb = ce / max(w, 1), vb / max(w, 1)
    return {"ce": ce, "vb": vb, "loss": ce + cfg.hybrid_coeff * vb}


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


# --- run directory -------------------------------------------------------------------------


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


def sampling_weights(ckpt: dict) -> dict:
    """The weights to sample with, from a checkpoint or model file (the one place that chooses them):
    the moving average when the run keeps one."""
    return ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]


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


def run_dir_for(run_name: str, checkpoint_dir="checkpoints") -> Path:
    return Path(checkpoint_dir) / run_name


def run_name_for(preset: str, data: str = "", prefix: str = "colab") -> str:
    """A default run name that differs for different data: <prefix>_<preset>_demo, or
    <prefix>_<preset>_<file name>_<the first 8 hex digits of its sha256>."""
    if not data:
        return f"{prefix}_{preset}_demo"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(data).name.split(".")[0]).strip("_")[:24] or "data"
    return f"{prefix}_{preset}_{stem}_{file_checksum(data)[:8]}"


MODEL_FILE = "model.pt"             # what generation needs: weights, vocabulary, config, data stats


def checkpoint_path(run_dir, checkpoint: str = "best") -> Path:
    """The file a run samples from: best.pt, else last.pt, else model.pt (a run downloaded without its
    checkpoints); or last.pt when asked for."""
    run_dir = Path(run_dir)
    if checkpoint != "best":
        return run_dir / f"{checkpoint}.pt"
    return next((run_dir / name for name in ("best.pt", "last.pt", MODEL_FILE) if (run_dir / name).exists()),
                run_dir / "best.pt")


def export_model(run_dir, checkpoint: str = "best") -> Path:
    """Write run_dir/model.pt: the sampling weights, vocabulary, config and data stats, without the
    optimizer state (a few MB for the small preset). load_run and generate take it, or a folder holding
    it; resuming training needs last.pt."""
    run_dir = Path(run_dir)
    source = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(source)
    stats_path = run_dir / "data_stats.json"
    model = {"format": CHECKPOINT_FORMAT, "config": ckpt["config"], "letters": ckpt["letters"],
             "targets": ckpt["targets"], "model": sampling_weights(ckpt), "step": ckpt["step"],
             "epoch": ckpt["epoch"], "source": source.name,
             "stats": json.loads(stats_path.read_text()) if stats_path.exists() else ckpt.get("stats", {})}
    out = run_dir / MODEL_FILE
    atomic_write(out, lambda f: torch.save(model, f))
    return out


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


class Trainer:
    """Owns one training run: model, optimizer, device data, history and checkpoints."""

    def __init__(self, cfg: Config, run_dir, resume: bool = False, skip_invalid: bool = False, rows=None):
        """`rows` (already validated) replaces loading cfg.data, e.g. for benchmarks."""
        self.run_dir = Path(run_dir)
        ckpt = self._existing_checkpoint(resume)
        if ckpt is not None:
            cfg = self._resumed_config(ckpt["config"], cfg)
        self.cfg = cfg
        self.rank, self.world, self.device = distributed_setup(cfg.device)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} does not split over {self.world} processes")
        share = cfg.batch_size // self.world            # this rank's rows of each global batch
        self.part = slice(self.rank * share, (self.rank + 1) * share) if self.world > 1 else slice(None)
        self.is_main = self.rank == 0                   # only rank 0 writes logs, plots and checkpoints
        rows = rows if rows is not None else load_rows(cfg.data or None, skip_invalid=skip_invalid)
        self.vocab = Vocab(ckpt["letters"], ckpt["targets"]) if ckpt else Vocab.from_rows(rows)
        self.data_sha256 = file_checksum(rows.path) if Path(rows.path).is_file() else ""
        if ckpt:
            self._check_compatible(rows)
        train_idx, val_idx = split_indices(rows, cfg.val_fraction)
        self.train_data = DeviceData(rows, self.vocab, train_idx, self.device)
        self.val_data = DeviceData(rows, self.vocab, val_idx, self.device)
        self.stats = data_stats(subset_rows(rows, train_idx), self.vocab)
        self.stats.update(heldout_rows=len(val_idx), data=rows.path, data_sha256=self.data_sha256,
                          skip_invalid=skip_invalid)

        self.diffusion = D3PM(len(self.vocab.letters), cfg.n_steps, self.device)
        self.model = build_model(cfg, self.vocab, self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema_decay else None
        self.epoch_rows = epoch_rows(self.train_data.label, cfg.label1_repeat)
        self.steps_per_epoch = max(1, len(self.epoch_rows) // cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        if self.total_steps < cfg.warmup and self.is_main:
            log(f"note: this run is only {self.total_steps} steps ({self.steps_per_epoch} an epoch), fewer than the "
                f"{cfg.preset} preset's warm-up of {cfg.warmup} steps alone: warm-up is cut to "
                f"{warmup_steps(cfg, self.total_steps)} of them and the model will learn little. More data, or more "
                f"epochs ({control('epochs')}), make a longer run.")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_at(s, self.cfg, self.total_steps))
        self.amp = amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.forward = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.forward = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        self.step, self.epoch, self.best_val, self.history = 0, 0, float("inf"), []
        if ckpt:
            self._restore(ckpt)
        else:
            torch.manual_seed(cfg.seed)                 # the same stream on every rank: they share the noise
        if not ckpt and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", asdict(cfg))
            write_json(self.run_dir / "vocab.json", {"letters": self.vocab.letters, "targets": self.vocab.targets})
            write_json(self.run_dir / "data_stats.json", self.stats)
            (self.run_dir / "history_steps.csv").write_text("step,epoch,lr,ce,vb,loss\n")

    # -- resume ------------------------------------------------------------------------------

    def _existing_checkpoint(self, resume: bool):
        """The checkpoint a run resumes from: last.pt, or best.pt when there is no last.pt (the user removed
        an unreadable one, as the error below offers)."""
        found = [self.run_dir / name for name in ("last.pt", "best.pt") if (self.run_dir / name).exists()]
        if not found:
            if resume and self.run_dir.exists() and any(self.run_dir.iterdir()):
                log(f"{self.run_dir}: no checkpoint yet; starting the run from the beginning")
            return None
        if not resume:
            raise DataError(f"{self.run_dir} already holds a run ({found[0].name}): to continue it, {control('resume')}; "
                            f"or choose another run name ({control('run_name')}).")
        if found[0].name == "best.pt":
            log(f"{self.run_dir}: no last.pt; continuing from best.pt")
        try:
            return load_checkpoint(found[0])
        except DataError as e:
            raise DataError(f"{e}\n{self._fallback(found[0])}") from e

    def _fallback(self, bad: Path) -> str:
        """What to do when `bad` cannot be read: continue from an intact best.pt, or start over."""
        best = self.run_dir / "best.pt"
        try:
            ckpt = load_checkpoint(best) if bad != best else None
        except DataError:
            ckpt = None
        if ckpt is None:
            return (f"There is no intact best.pt to fall back on: choose another run name ({control('run_name')}) "
                    f"to start over, or delete {self.run_dir}.")
        return (f"best.pt beside it is intact (step {ckpt['step']}, epoch {ckpt['epoch']}): delete or rename "
                f"{bad.name} and run again to continue from best.pt (steps after {ckpt['step']} are trained again).")

    def _resumed_config(self, saved: dict, asked: Config) -> Config:
        """A resumed run keeps its model and data; only how long it runs and where may change."""
        if asked.preset != saved["preset"]:
            raise DataError(f"{self.run_dir} holds a {saved['preset']} run, which cannot continue as {asked.preset}: "
                            f"resume it with preset {saved['preset']}, or choose another run name ({control('run_name')})")
        cfg = config_from_saved(saved)
        for name in ("epochs", "max_steps", "device", "save_every_minutes", "compile", "log_every"):
            setattr(cfg, name, getattr(asked, name))
        cfg.data = asked.data or cfg.data           # the same data may live at a new path (checked below)
        return cfg

    def _check_compatible(self, rows: Rows):
        extra_letters = set("".join(rows.sequences)) - set(self.vocab.letters)
        extra_targets = {t for t in rows.targets if t} - set(self.vocab.targets)
        if extra_letters or extra_targets:
            raise DataError(f"{rows.path} does not match the checkpoint in {self.run_dir}: new letters "
                            f"{sorted(extra_letters)}, new targets {sorted(extra_targets)[:10]}. A run continues "
                            f"only on its own data: choose another run name ({control('run_name')}) for these.")
        stats_path = self.run_dir / "data_stats.json"
        trained_on = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        if trained_on.get("data_sha256") and trained_on["data_sha256"] != self.data_sha256:
            raise DataError(f"{self.run_dir} was trained on {trained_on['data']} (sha256 "
                            f"{trained_on['data_sha256'][:12]}), and {rows.path} holds other data (sha256 "
                            f"{self.data_sha256[:12] or 'unknown'}). A run continues only on its own data: choose "
                            f"another run name ({control('run_name')}) for these.")

    def _restore(self, ckpt: dict):
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
        self.step, self.epoch, self.best_val = ckpt["step"], ckpt["epoch"], ckpt["best_val"]
        self.history = ckpt["history"]
        torch.set_rng_state(ckpt["rng_cpu"])
        if self.device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], self.device)
        steps_csv = self.run_dir / "history_steps.csv"            # drop steps logged after the checkpoint
        if steps_csv.exists() and self.is_main:
            lines = steps_csv.read_text().splitlines()
            kept = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= self.step]
            atomic_write(steps_csv, lambda f: f.write(("\n".join(kept) + "\n").encode()))
        if self.is_main:
            log(f"resuming {self.run_dir} at step {self.step} (epoch {self.epoch + 1})")

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "config": asdict(self.cfg), "letters": self.vocab.letters,
                "targets": self.vocab.targets, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "step": self.step, "epoch": self.epoch, "best_val": self.best_val, "history": self.history,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def save(self, best: bool = False):
        """last.pt (and best.pt), each written atomically. A disk that refuses stops the run with a
        DiskError saying which step the checkpoints on disk still hold."""
        if not self.is_main:
            return
        ckpt = self.checkpoint()
        try:
            atomic_write(self.run_dir / "last.pt", lambda f: torch.save(ckpt, f))
            self._saved_step = self.step
            if best:
                atomic_write(self.run_dir / "best.pt", lambda f: torch.save(ckpt, f))
        except DiskError as e:
            raise DiskError(f"{e}. Training stopped at step {self.step}; {self._kept_state()}. Free some disk "
                            f"space or choose a writable checkpoint directory, then resume the run.") from e

    def _kept_state(self) -> str:
        """Where the last good state is, for an error that stops the run."""
        if getattr(self, "_saved_step", None) is None or not (self.run_dir / "last.pt").exists():
            return "no checkpoint was saved yet"
        return f"{self.run_dir}/last.pt keeps the last good state (step {self._saved_step})"

    @property
    def skip_tolerance(self) -> int:
        """Steps in a row whose update may be skipped for a non-finite gradient: some under fp16, where the
        gradient scaler expects overflows while its scale settles; none otherwise."""
        return MAX_FP16_SKIPS_IN_A_ROW if self.scaler.is_enabled() else 0

    # -- the loop ----------------------------------------------------------------------------

    def train_step(self, x0, label, target_id):
        """One optimizer step on a global batch (every rank gets the whole batch and scores its part).
        Returns this rank's (ce, vb, loss) share and the gradient norm; nothing here reads them on the host.
        A step whose gradient is not finite changes nothing (weights, moments, step counts); flush() sees
        its norm and decides whether the run goes on."""
        label, target_id = drop_condition(label, target_id, self.cfg.cond_drop, self.cfg.label1_repeat)
        ce, vb = self.diffusion.losses(self.forward, x0, label, target_id, part=self.part)
        loss = ce + self.cfg.hybrid_coeff * vb if self.cfg.hybrid_coeff else ce   # no backward through an unused vb
        self.scaler.scale(loss * self.world).backward()    # DDP averages gradients over ranks; we want their sum
        self.scaler.unscale_(self.optimizer)                # fp16: the true gradients; a no-op otherwise
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        # Clipping spreads one inf as NaN over every gradient. The fused AdamW kernel skips its update where
        # found_inf is 1 (GradScaler's protocol), reading the flag on the device: no host sync.
        self.optimizer.found_inf, self.optimizer.grad_scale = (~grad_norm.isfinite()).float(), None
        self.optimizer.step()
        del self.optimizer.found_inf, self.optimizer.grad_scale
        self.scaler.update()                                # fp16: a skipped step lowers the scale
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:                  # short warm-up, so early epochs are not the initial weights
            decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - decay)
        return torch.stack([ce.detach(), vb.detach(), loss.detach(), grad_norm.detach()])

    def flush(self, buffer, n: int, steps_file, bar) -> list:
        """Read the last n steps' losses and gradient norms from the device (the loop's only host sync, once
        per log_every steps), stop on NaN/inf (_screen_steps), append them to history_steps.csv and show
        them on the progress bar. Returns the steps' finite (ce, vb, loss) for the epoch's means."""
        if n == 0:
            return []
        if self.world > 1:                              # each rank holds its share of every step's loss
            torch.distributed.all_reduce(buffer[:n])
        readings = buffer[:n].tolist()
        values = [r[:3] for r in readings]              # (ce, vb, loss); the 4th column is the gradient norm
        first = self.step - n + 1
        self._screen_steps(readings, first)
        lr = lambda step: self.cfg.lr * lr_at(step - 1, self.cfg, self.total_steps)   # the lr step `step` used
        finite = [v for v in values if all(map(math.isfinite, v))]  # fp16 steps skipped for an overflow may lack a loss
        if steps_file is None:                          # ranks other than 0 keep no files
            return finite
        try:
            steps_file.write("".join(f"{first + i},{self.epoch + 1},{lr(first + i):.6g},{ce:.6g},{vb:.6g},{loss:.6g}\n"
                                     for i, (ce, vb, loss) in enumerate(values)))
            steps_file.flush()
        except OSError as e:
            raise DiskError(f"cannot write {steps_file.name}: {e.strerror or e}. Training stopped at step "
                            f"{self.step}; {self._kept_state()}. Free some disk space, then resume the run.") from e
        if finite:
            ce, vb, loss = np.mean(finite, axis=0)
            bar.set_postfix(ce=f"{ce:.3f}", vb=f"{vb:.3f}", loss=f"{loss:.3f}", refresh=False)
        return finite

    def _screen_steps(self, readings: list, first: int):
        """Stop on a step that went wrong: a non-finite loss, or a gradient that was not finite (that
        update was skipped on the device, so the weights stay finite). Under fp16 skipped steps are
        counted and tolerated up to skip_tolerance in a row (see MAX_FP16_SKIPS_IN_A_ROW)."""
        new_skips = []
        for i, (ce, vb, loss, grad_norm) in enumerate(readings):
            step = first + i
            losses_finite = all(map(math.isfinite, (ce, vb, loss)))
            if math.isfinite(grad_norm):
                self._skips_in_a_row = 0
                if losses_finite:
                    continue
            else:
                new_skips.append(step)
                self._skips_in_a_row += 1
                if self._skips_in_a_row <= self.skip_tolerance:
                    continue
            problem = (f"loss became {loss} (ce {ce}, vb {vb}) at step {step}" if not losses_finite else
                       f"the gradient was not finite at step {step} (its loss was {loss:.4g}); that update was skipped")
            if self._skips_in_a_row > 1:
                problem += (f"; steps {step - self._skips_in_a_row + 1}-{step} were all skipped, although the fp16 "
                            f"gradient scaler lowered its scale after each")
            self.skipped_steps += new_skips
            raise NonFiniteLoss(f"{problem}; stopping: {self._kept_state()}. Try a lower learning rate.")
        self.skipped_steps += new_skips
        if new_skips and self.is_main:
            log(f"step{'s' if len(new_skips) > 1 else ''} {', '.join(map(str, new_skips))}: fp16 gradient overflow, "
                f"update skipped while the gradient scaler settles ({len(self.skipped_steps)} skipped so far)")

    def run(self, progress: bool = True, verbose: bool = False, on_step=None) -> dict:
        """Train until the epochs or max_steps run out. Ctrl-C (or a notebook interrupt) lets the step under
        way finish, then saves last.pt: a resumed run continues exactly (see DeferredInterrupt)."""
        cfg = self.cfg
        self.skipped_steps, self._skips_in_a_row = [], 0
        if self.step >= self.total_steps:
            log(f"{self.run_dir}: already trained for {self.step} steps; nothing to do")
            return self.summary()
        from tqdm.auto import tqdm
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (progress and self.is_main),
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        buffer = torch.zeros(cfg.log_every, 4, device=self.device)   # per-step (ce, vb, loss, grad norm), read every log_every
        n_buf, last_save, mid_step = 0, time.time(), False
        self._saved_step = self.step
        self.model.train()
        steps_file = open(self.run_dir / "history_steps.csv", "a") if self.is_main else None
        # Ranks must stop at the same step (collectives), so only a single process defers Ctrl-C.
        interrupt = DeferredInterrupt(enabled=self.world == 1)
        interrupt.install()
        try:
            while self.step < self.total_steps:
                order = self.epoch_rows[epoch_permutation(len(self.epoch_rows), cfg.seed, self.epoch, self.device)]
                first = self.step - self.epoch * self.steps_per_epoch    # > 0 after a mid-epoch resume
                last = min(self.steps_per_epoch, first + self.total_steps - self.step)
                epoch_values = []
                for b in range(first, last):
                    if interrupt.requested:             # between steps: the state is one the run passes through
                        raise KeyboardInterrupt
                    idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                    mid_step = True
                    buffer[n_buf] = self.train_step(*self.train_data.batch(idx))
                    self.step, n_buf, mid_step = self.step + 1, n_buf + 1, False
                    bar.update(1)
                    if n_buf == cfg.log_every:
                        epoch_values += self.flush(buffer, n_buf, steps_file, bar)
                        n_buf = 0
                        if self.agree(time.time() - last_save > cfg.save_every_minutes * 60):
                            self.save()
                            last_save = time.time()
                    if on_step is not None:
                        on_step(self.step)
                epoch_values += self.flush(buffer, n_buf, steps_file, bar)
                n_buf = 0
                self.end_epoch(epoch_values, verbose, partial=last < self.steps_per_epoch)
                last_save = time.time()
        except KeyboardInterrupt:
            if self.world == 1 and not (mid_step or interrupt.hard):
                self.flush(buffer, n_buf, steps_file, bar)
                self.save()
                log(f"\ninterrupted: saved {self.run_dir}/last.pt at step {self.step}; to continue, {control('resume')}")
            elif self.world == 1:
                log(f"\ninterrupted {f'during step {self.step + 1}' if mid_step else 'at once'}: nothing saved; "
                    f"{self._kept_state()}")
            raise
        finally:
            interrupt.restore()
            if steps_file:
                steps_file.close()
            bar.close()
        if self.world > 1:              # rank 0 still scores, saves and plots; leaving early races its teardown
            torch.distributed.barrier()
        return self.summary()

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
        train = np.mean(values, axis=0) if values else [float("nan")] * 3
        sampler = self.ema if self.ema is not None else self.model        # best.pt: the weights that sample
        val = heldout_losses(sampler, self.diffusion, self.val_data, self.cfg) if len(self.val_data) else {}
        record = {"epoch": number, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
                  "train_ce": float(train[0]), "train_vb": float(train[1]), "train_loss": float(train[2]),
                  **{f"val_{k}": v for k, v in val.items()}, "partial": partial}
        self.history.append(record)
        val_loss = val.get("loss", record["train_loss"])
        is_best = val_loss < self.best_val
        self.best_val = min(self.best_val, val_loss)
        self.save(best=is_best)
        write_json(self.run_dir / "history.json", {"epochs": self.history, "ln_k": math.log(self.diffusion.K)})
        plot_convergence(self.run_dir)
        if verbose:
            log(f"epoch {record['epoch']} step {self.step}: train ce {record['train_ce']:.4f} vb "
                f"{record['train_vb']:.4f} | held-out ce {val.get('ce', float('nan')):.4f} vb "
                f"{val.get('vb', float('nan')):.4f} loss {val_loss:.4f}{' (best)' if is_best else ''}")

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {"run_dir": str(self.run_dir), "step": self.step, "epoch": self.epoch,
                "best_val_loss": self.best_val, "last": last, "params": count_params(self.model),
                "skipped_steps": len(getattr(self, "skipped_steps", []))}


def train(cfg: Config, run_dir, resume: bool = False, skip_invalid: bool = False, progress: bool = True,
          verbose: bool = False, on_step=None) -> dict:
    """Train (or resume) a run in run_dir. Returns a summary dict."""
    trainer = Trainer(cfg, run_dir, resume=resume, skip_invalid=skip_invalid)
    if verbose:
        log(f"{trainer.run_dir}: preset {trainer.cfg.preset}, {count_params(trainer.model):,} parameters, "
            f"{len(trainer.train_data):,} training / {len(trainer.val_data):,} held-out rows (label-1 rows "
            f"x{trainer.cfg.label1_repeat} per epoch), "
            f"{trainer.steps_per_epoch} steps per epoch, device {trainer.device}"
            f"{', ' + str(trainer.amp).replace('torch.', '') if trainer.amp else ''}")
    return trainer.run(progress=progress, verbose=verbose, on_step=RunTimer(trainer, then=on_step))


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


def load_run(run_dir, checkpoint: str = "best", device: str = "auto") -> Run:
    """A model ready to sample, from a run directory (see checkpoint_path) or a model file (export_model)."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else checkpoint_path(run_dir, checkpoint)
    run_dir = path.parent
    ckpt = load_checkpoint(path)
    cfg = config_from_saved(ckpt["config"])
    vocab = Vocab(ckpt["letters"], ckpt["targets"])
    dev = pick_device(device)
    model = X0Transformer(cfg, vocab.size, vocab.num_targets)
    try:
        model.load_state_dict(sampling_weights(ckpt))
    except RuntimeError as e:
        raise DataError(f"{path}: weights do not match the config stored with them: {e}") from e
    stats_path = run_dir / "data_stats.json"
    stats = ckpt.get("stats") or (json.loads(stats_path.read_text()) if stats_path.exists() else {})
    return Run(cfg, vocab, model.to(dev).eval(), D3PM(len(vocab.letters), cfg.n_steps, dev), stats, dev, run_dir)


def length_probs(run: Run, label: int, target: str | None, min_length: int, max_length: int) -> np.ndarray:
    """P(length) over 0..MAX_LEN: the target's training lengths (if it has enough rows), else the label's,
    restricted to [min_length, max_length]; uniform in the range if the data have none there."""
    counts = np.zeros(MAX_LEN + 1)
    if target and sum(run.stats.get("target_length_counts", {}).get(target, [])) >= 20:
        counts = np.array(run.stats["target_length_counts"][target], dtype=float)
    elif "length_counts" in run.stats:
        counts = np.array(run.stats["length_counts"][str(label)], dtype=float)
    in_range = np.zeros(MAX_LEN + 1)
    in_range[min_length:max_length + 1] = 1
    probs = counts * in_range
    if probs.sum() == 0:
        probs = in_range
    return probs / probs.sum()


@torch.no_grad()
def sample_tokens(run: Run, lengths, label: int, target_id: int, guidance: float = 0.0,
                  standard_only: bool = True, generator=None, x0=None, start_step: int | None = None, keep=None):
    """Reverse diffusion for peptides of the given lengths (n,). Starts from uniform noise on residue
    positions (q(x_T) is uniform) and draws x_{t-1} ~ p(x_{t-1} | x_t) down to x0. Guidance S mixes the
    conditional and unconditional x0 log-probs, (1 + S) * cond - S * uncond, both from one forward pass
    over 2n rows. Columns past the longest peptide are never computed. Returns tokens (n, MAX_LEN).
    Given tokens x0 (n, MAX_LEN) of those lengths, it starts instead from x0 noised to start_step (T by
    default; 0 returns x0), and where keep (n, MAX_LEN) is True it holds x0's letters at every step."""
    dev, K, T = run.device, run.diffusion.K, run.diffusion.T
    lengths = np.asarray(lengths)
    n, width = len(lengths), int(lengths.max())
    pad_mask = torch.arange(width, device=dev)[None] < torch.as_tensor(lengths, device=dev)[:, None]
    label_t = torch.full((n,), label, device=dev)
    target_t = torch.full((n,), target_id, device=dev)
    if guidance:                                            # rows n..2n-1: the unconditional twin
        label_t = torch.cat([label_t, torch.full_like(label_t, UNKNOWN_LABEL)])
        target_t = torch.cat([target_t, torch.full_like(target_t, UNKNOWN_TARGET)])
    blocked = torch.zeros(K, dtype=torch.bool, device=dev)
    if standard_only:                                       # no X / B / Z / U in generated peptides
        blocked = torch.tensor([c not in RESIDUES for c in run.vocab.letters], device=dev)
    start_step = T if start_step is None else start_step
    if x0 is None:
        xtr = torch.randint(0, K, (n, width), device=dev, generator=generator)
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
            logits = run.model(xt, torch.full((len(xt),), t, device=dev), label_t, target_t)
        logp = logits.float().log_softmax(-1)
        if guidance:
            cond, uncond = logp.chunk(2)
            logp = (1 + guidance) * cond - guidance * uncond
        p0 = logp.masked_fill(blocked, -float("inf")).softmax(-1)
        xtr = clamp(sample_categorical(run.diffusion.posterior(xtr, torch.full((n,), t, device=dev), p0), generator))
    return F.pad(torch.where(pad_mask, xtr + 1, PAD), (0, MAX_LEN - width), value=PAD).cpu()


# Plain conditional sampling. A model that learned its conditions' grammar needs no push: on the demo,
# guidance 0.5-2 made the label-1 vs background gaps in net charge and hydropathy 1.6-2.3x and 2.0-4.7x
# the data's (a caricature of the condition) and its residue pairs farther from real peptides, while
# guidance 0 kept them at 1.1x and 1.3x and already wrote each motif target's motif in order (README,
# "Guidance"; BENCHMARKS.md, "What makes the model write motifs in order").
DEFAULT_GUIDANCE = 0.0
DEFAULT_STRENGTH = 0.5


def strength_step(strength: float, n_steps: int) -> int:
    """The diffusion step a variant starts from: the first t with t / T >= strength (0 -> 0, 1 -> T)."""
    return math.ceil(round(strength * n_steps, 6))


def identity(a: str, b: str) -> float:
    """Fraction of positions where two peptides of one length hold the same letter."""
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def check_seed_peptide(run: Run, seq: str, what: str, standard_only: bool, min_length: int, max_length: int,
                       wildcard: str = "") -> str:
    """A parent or template, uppercase, or a DataError naming what is wrong with it."""
    given, seq = seq.strip(), seq.strip().upper()
    problem = peptide_problem(seq, run.vocab.letters, wildcard)
    rare = re.search(f"[^{RESIDUES}{wildcard}]", seq) if standard_only and not problem else None
    if rare:
        problem = (f"'{rare.group()}' at position {rare.start() + 1} is not one of the 20 standard residues, and "
                   f"outputs hold only those unless rare letters are allowed (--allow-rare, standard_only=False)")
    if problem:
        raise DataError(f"{what} '{given}': {problem}")
    if not min_length <= len(seq) <= max_length:
        raise DataError(f"{what} '{given}' has length {len(seq)}, outside the requested length range "
                        f"{min_length}-{max_length} (outputs keep its length)")
    return seq


def generate(run, n: int = 100, label: int = 1, target: str | None = None, min_length: int = MIN_LEN,
             max_length: int = MAX_LEN, seed: int = 0, guidance: float = DEFAULT_GUIDANCE,
             standard_only: bool = True, batch_size: int = 1024, checkpoint: str = "best",
             device: str = "auto", parent: str | None = None, strength: float | None = None,
             template: str | None = None) -> list:
    """n peptides for a condition. `run` is a Run or a run directory. A target implies label 1.
    parent: n variants of that peptide, of its length: it is noised to the step that matches `strength`
    (0: the parent itself; 1: pure noise, as without a parent; default 0.5) and denoised under the
    condition. template: the outputs' length in characters, residue letters kept at every reverse step
    and x where the model writes (e.g. xxPPxYxx)."""
    if not isinstance(run, Run):
        run = load_run(run, checkpoint=checkpoint, device=device)
    if label not in (0, 1):
        raise DataError(f"label must be 0 or 1, not {label}")
    if target and label == 0:
        raise DataError("a target goes with label 1 (background peptides have no target)")
    if not MIN_LEN <= min_length <= max_length <= MAX_LEN:
        raise DataError(f"length range {min_length}-{max_length} must lie within {MIN_LEN}-{MAX_LEN}")
    if parent is not None and template is not None:
        raise DataError("give a parent peptide to vary or a template to fill, not both")
    if strength is not None and parent is None:
        raise DataError("a strength goes with a parent peptide to vary")
    strength = DEFAULT_STRENGTH if strength is None else strength
    if not 0 <= strength <= 1:
        raise DataError(f"strength must lie in [0, 1] (0: the parent unchanged, 1: from pure noise), not {strength}")
    target_id = run.vocab.target_id(target)
    x0 = start_step = keep = None
    if parent is not None or template is not None:
        what, given = ("template", template) if template is not None else ("parent", parent)
        seq = check_seed_peptide(run, given, what, standard_only, min_length, max_length, "X" if template else "")
        lengths = np.full(n, len(seq))
        x0 = torch.from_numpy(run.vocab.encode([seq.replace("X", run.vocab.letters[0]) if template else seq]))
        if template is not None:                        # X: write here; the letter under it is never seen
            keep = torch.tensor([[c != "X" for c in seq] + [False] * (MAX_LEN - len(seq))])
        else:
            start_step = strength_step(strength, run.diffusion.T)
    else:
        rng = np.random.default_rng(seed)
        lengths = rng.choice(MAX_LEN + 1, size=n, p=length_probs(run, label, target, min_length, max_length))
    g = torch.Generator(device=run.device).manual_seed(seed)
    repeat = lambda v, m: None if v is None else v.expand(m, -1)       # the parent or template, m times
    out = []
    for start in range(0, n, batch_size):
        part = lengths[start:start + batch_size]
        tokens = sample_tokens(run, part, label, target_id, guidance, standard_only, g, repeat(x0, len(part)),
                               start_step, repeat(keep, len(part)))
        out += run.vocab.decode(tokens)
    return out


def sample_table(run: Run, target: str | None = None, n: int = 10, min_length: int = MIN_LEN,
                 max_length: int = MAX_LEN, guidance: float = DEFAULT_GUIDANCE, seed: int = 0) -> str:
    """n peptides for each condition side by side: interacting with any target, interacting with
    `target` (when given), background."""
    conditions = {"interacting, any target": dict(label=1)}
    if target:
        conditions[f"interacting with {target}"] = dict(target=target)
    conditions["background"] = dict(label=0)
    columns = {title: generate(run, n=n, min_length=min_length, max_length=max_length, guidance=guidance,
                               seed=seed + i, **condition) for i, (title, condition) in enumerate(conditions.items())}
    widths = [max(MAX_LEN, len(title)) for title in columns]
    lines = ["  ".join(title.ljust(w) for title, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(p.ljust(w) for p, w in zip(row, widths)) for row in zip(*columns.values())]
    return "\n".join(lines)


# =============================================================================================
# Evaluation: held-out likelihood, sample quality and conditioning, each beside its baseline
# =============================================================================================


@torch.no_grad()
def heldout_bound_nats(run: Run, x0, label, target_id, generator=None, batch_size: int = 512, n_draws: int = 1,
                       seed: int | None = None):
    """The D3PM variational bound -log p(x0 | length) >= ... per sequence, in nats, (N,): the prior term
    KL(q(x_T | x0) || uniform), the KL terms of every step t = 2..T and the reconstruction term
    -log p(x0 | x_1) (the t = 1 term of ce_and_vb), each with x_t ~ q(x_t | x0), as d3pm's calc_bpd_loop.
    With n_draws > 1 the step terms are averaged over that many draws of the x_t. With a seed the x_t come
    from peptide_noise instead of `generator`: a sequence's bound then depends on nothing but the seed
    and the sequence (not on the other rows or their order), and two calls under other labels or
    targets see the same x_t, so the noise common to both cancels in their difference. The model runs in
    full precision (full_precision), so a bound does not move with the batch on a GPU either."""
    d, dev = run.diffusion, run.device
    out = []
    for start in range(0, x0.shape[0], batch_size):
        xb = x0[start:start + batch_size].to(dev).long()
        if seed is not None:        # peptide_noise does not depend on the width: skip the all-PAD columns
            xb = xb[:, :max(1, int((xb != PAD).sum(1).max()))]
        lb, tb = label[start:start + batch_size].to(dev), target_id[start:start + batch_size].to(dev)
        pad_mask, x0r, B = xb != PAD, (xb - 1).clamp_min(0), xb.shape[0]
        q_T = d.q_probs(x0r, torch.full((B,), d.T, device=dev))
        prior = (torch.special.xlogy(q_T, q_T * d.K).sum(-1) * pad_mask).sum(-1)
        steps = torch.zeros(B, device=dev)
        for draw in range(n_draws):
            noise = peptide_noise(xb, seed, draw, d.T, d.K).to(dev) if seed is not None else None
            for t in range(1, d.T + 1):
                t_b = torch.full((B,), t, device=dev)
                xt, xtr = d.q_sample(xb, t_b, generator, None if noise is None else noise[:, t - 1])
                with full_precision(dev):
                    logits = run.model(xt, t_b, lb, tb)
                _, vb = d.ce_and_vb(logits.float(), x0r, xtr, t_b)
                steps += (vb * pad_mask).sum(-1)
        out.append((prior + steps / n_draws).cpu())
    return torch.cat(out)


def peptide_noise(x0, seed: int, draw: int, n_steps: int, num_letters: int):
    """Uniforms (B, n_steps, L, K) for drawing x_1..x_T of each row of x0 (B, L), from a generator seeded
    by (seed, draw, the row's residues): a peptide gets the same noise in any batch, at any row, any width."""
    salt, g = zlib.crc32(f"{seed}/{draw}".encode()), torch.Generator()
    keys = [zlib.crc32(r[r != PAD].tobytes(), salt) for r in x0.to("cpu", torch.uint8).numpy()]
    noise = [torch.rand((n_steps, MAX_LEN, num_letters), generator=g.manual_seed(k)) for k in keys]
    return torch.stack(noise)[:, :, :x0.shape[1]]


DEFAULT_SCORE_DRAWS = 1     # 10,000 peptides (small preset) within a minute on a 2-core CPU; --draws N averages N


def condition_bits(run: Run, peptides: list, label: int, target_id: int, draws: int, seed: int,
                   batch_size: int = 512) -> np.ndarray:
    """heldout_bound_nats of each peptide under one condition, in bits (N,), with per-peptide noise.
    Batches hold peptides of similar lengths (fewer PAD columns); the results come back in input order."""
    by_length = np.argsort([len(p) for p in peptides], kind="stable")
    x0 = torch.from_numpy(run.vocab.encode([peptides[i] for i in by_length]))
    n = len(peptides)
    nats = heldout_bound_nats(run, x0, torch.full((n,), label), torch.full((n,), target_id),
                              batch_size=batch_size, n_draws=draws, seed=seed)
    bits = np.empty(n)
    bits[by_length] = nats.double().numpy() / math.log(2)
    return bits


def score(run, peptides, target: str | None = None, label: int = 1, draws: int = DEFAULT_SCORE_DRAWS,
          seed: int = 0, batch_size: int = 512, checkpoint: str = "best", device: str = "auto") -> list:
    """How much more the model believes each peptide under the condition (label 1 and `target`; no
    target: any target) than under background (label 0), in bits: the variational bound under
    background minus under the condition, from the same draws of the noise (`draws` of them). Higher
    means more like the target's peptides. A peptide's score depends only on it, the run and the seed.
    `run` is a Run or a run directory. Returns one dict per peptide, in order: peptide, score,
    condition_bits, background_bits, length."""
    if not isinstance(run, Run):
        run = load_run(run, checkpoint=checkpoint, device=device)
    if label != 1:
        raise DataError(f"the score compares a condition with background (label 0), so its label is 1, not {label}")
    if draws < 1:
        raise DataError(f"draws must be 1 or more, not {draws}")
    target_id = run.vocab.target_id(target)
    peptides = [p.strip().upper() for p in peptides]
    problems = [(i + 1, p, why) for i, p in enumerate(peptides) if (why := peptide_problem(p, run.vocab.letters))]
    if problems:
        raise DataError(f"{len(problems)} of {len(peptides)} peptides cannot be scored:\n"
                        + "\n".join(f"  peptide {i} '{p}': {why}" for i, p, why in problems[:20])
                        + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    if not peptides:
        return []
    cond = condition_bits(run, peptides, 1, target_id, draws, seed, batch_size)
    background = condition_bits(run, peptides, 0, UNKNOWN_TARGET, draws, seed, batch_size)
    return [{"peptide": p, "score": b - c, "condition_bits": c, "background_bits": b, "length": len(p)}
            for p, c, b in zip(peptides, cond.tolist(), background.tolist())]


SCORE_COLUMNS = ("peptide", "score", "condition_bits", "background_bits", "length")


def format_scores(results: list, ranked: bool = False) -> str:
    """score()'s results as a tab-separated table with a header, in input order or best first. A row
    with a `skipped` reason (a bad input line) has empty figures and the reason in a last column."""
    notes = any("skipped" in r for r in results)
    rows = sorted(results, key=lambda r: r.get("score", -math.inf), reverse=True) if ranked else results
    out = ["\t".join(SCORE_COLUMNS + (("skipped",) if notes else ()))]
    for r in rows:
        if "skipped" in r:
            out.append("\t".join([r["peptide"]] + [""] * (len(SCORE_COLUMNS) - 1) + [r["skipped"]]))
        else:
            out.append(f"{r['peptide']}\t{r['score']:.3f}\t{r['condition_bits']:.3f}\t{r['background_bits']:.3f}\t"
                       f"{r['length']}" + ("\t" if notes else ""))
    return "\n".join(out)


def composition(sequences, letters: str = RESIDUES) -> np.ndarray:
    """Residue frequencies over `letters` (letters outside it are not counted)."""
    counts = np.zeros(len(letters))
    index = {c: i for i, c in enumerate(letters)}
    for seq in sequences:
        for c in seq:
            if c in index:
                counts[index[c]] += 1
    return counts / max(counts.sum(), 1)


def residue_counts(sequences) -> np.ndarray:
    """(N, 20): how often each RESIDUES letter occurs in each peptide (other letters are not counted)."""
    tokens = Vocab(RESIDUES, []).encode(sequences).astype(np.int64)
    n = len(sequences)
    return np.bincount((np.arange(n)[:, None] * 21 + tokens).ravel(), minlength=n * 21).reshape(n, 21)[:, 1:]


def length_distribution(sequences) -> np.ndarray:
    counts = np.bincount([len(s) for s in sequences], minlength=MAX_LEN + 1)[:MAX_LEN + 1].astype(float)
    return counts / max(counts.sum(), 1)


def entropy_bits(p) -> float:
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits: 0 for equal distributions, 1 for disjoint ones."""
    p, q = np.asarray(p, float) / np.sum(p), np.asarray(q, float) / np.sum(q)
    m = (p + q) / 2
    kl = lambda a: float(np.sum(a[a > 0] * np.log2(a[a > 0] / m[a > 0])))
    return (kl(p) + kl(q)) / 2


def sample_metrics(samples: list, reference: list, train_set: set) -> dict:
    """Quality figures of generated peptides against held-out `reference` peptides of the same condition."""
    valid = [s for s in samples if MIN_LEN <= len(s) <= MAX_LEN and set(s) <= set(RESIDUES)]
    unique = set(samples)
    return {"n": len(samples), "validity": len(valid) / max(len(samples), 1),
            "uniqueness": len(unique) / max(len(samples), 1),
            "novelty": len(unique - train_set) / max(len(unique), 1),
            "js_composition": js_divergence(composition(samples) + 1e-12, composition(reference) + 1e-12),
            "js_length": js_divergence(length_distribution(samples) + 1e-12, length_distribution(reference) + 1e-12)}


def random_peptides(n: int, comp, length_p, seed: int = 0) -> list:
    """The floor: residues drawn i.i.d. from a composition over RESIDUES, lengths from length_p."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice(MAX_LEN + 1, size=n, p=length_p)
    letters = np.array(list(RESIDUES))
    return ["".join(rng.choice(letters, size=k, p=comp)) for k in lengths]


# --- uncertainty: every verdict is a difference or a ratio with its standard error ----------------


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


def verdict(diff: float, se: float, below: str, above: str) -> str:
    """`below` when diff < 0 by more than 2 standard errors, `above` when > 0 by more, else not distinguishable."""
    if diff is None:
        return "-"
    if se is None or abs(diff) <= 2 * se:
        return "not distinguishable (within 2 SE)"
    return below if diff < 0 else above


# --- order: the same residues in another order --------------------------------------------------

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


def mean_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None]:
    """mean(a) - mean(b) of two independent sets, and its standard error (None below 2 values a set)."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else None
    return float(a.mean() - b.mean()), se


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


# --- baselines: each condition's own training composition -----------------------------------

COMPOSITION_PRIOR = 20          # pseudo-residues: a target's composition leans on its label's by this weight


def condition_compositions(train_rows: Rows, vocab: Vocab) -> dict:
    """Residue composition over vocab.letters of each condition in training: "0" and "1" (one
    pseudo-count per letter, so no residue gets probability 0) and, under "targets", every target
    (its training residues plus COMPOSITION_PRIOR pseudo-residues of the label-1 composition, so a
    target with few training peptides falls back on its label's)."""
    tokens = vocab.encode(train_rows.sequences).astype(np.int64)
    K = len(vocab.letters)
    counts = lambda rows: np.bincount(tokens[rows].ravel(), minlength=K + 1)[1:].astype(float)
    comps = {str(l): (counts(train_rows.labels == l) + 1) / (counts(train_rows.labels == l).sum() + K) for l in (0, 1)}
    target_ids = vocab.target_ids(train_rows.targets)
    per_target = np.bincount((target_ids[:, None] * (K + 1) + tokens).ravel(),
                             minlength=vocab.num_targets * (K + 1)).reshape(vocab.num_targets, K + 1)[:, 1:]
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


def standard_composition(comp) -> np.ndarray:
    """A composition over the vocabulary's letters cut to RESIDUES (the letters samples use), renormalized."""
    comp = np.asarray(comp, float)[:len(RESIDUES)]
    return comp / comp.sum()


# --- the report -------------------------------------------------------------------------------


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
        return heldout_bound_nats(run, x0, label, target_id, generator, n_draws=n_draws).numpy() / math.log(2)
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
                    seed: int = 0, guidance: float = DEFAULT_GUIDANCE, motifs=None, max_rows: int = 5000) -> dict:
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
    report["conditioning"]["motifs"] = motif_report(run, samples.get(0), train_rows, comps, n_samples, n_per_target,
                                                    seed, guidance, motifs)
    return report


def auroc_wins(pos, neg) -> np.ndarray:
    """(n_pos, n_neg): 1 where a positive scores above a negative, 0.5 on a tie, 0 below."""
    diff = np.asarray(pos, dtype=float)[:, None] - np.asarray(neg, dtype=float)[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def paired_auroc(scores: dict, n_pos: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC of several scorers on the same rows: scores maps a scorer's name to its scores of the n_pos
    positives followed by the negatives. Each AUROC comes with a 95% bootstrap interval, and so does
    each scorer's difference from the first one; positives and negatives are resampled apart, with the
    same resamples for every scorer, so the differences (first minus the others) are paired."""
    rng = np.random.default_rng(seed)
    wins = {k: auroc_wins(v[:n_pos], v[n_pos:]) for k, v in scores.items()}
    n_neg = next(iter(wins.values())).shape[1]
    w_pos = rng.multinomial(n_pos, np.full(n_pos, 1 / n_pos), size=n_boot)
    w_neg = rng.multinomial(n_neg, np.full(n_neg, 1 / n_neg), size=n_boot)
    boot = {k: ((w_pos @ m) * w_neg).sum(1) / (n_pos * n_neg) for k, m in wins.items()}     # (n_boot,) AUROCs
    interval = lambda x: [float(v) for v in np.percentile(x, [2.5, 97.5])]
    first = next(iter(scores))
    out = {"positives": n_pos, "negatives": n_neg, "difference": {}}
    for k, m in wins.items():
        out[k] = {"auroc": float(m.mean()), "interval": interval(boot[k])}
        if k != first:
            out["difference"][k] = {"value": float(wins[first].mean() - m.mean()),
                                    "interval": interval(boot[first] - boot[k])}
    return out


def composition_log_odds(target_seqs: list, background_seqs: list, letters: str) -> dict:
    """letter -> log2 of its frequency in target_seqs over background_seqs (add-one smoothed counts)."""
    def freqs(seqs):
        counts = composition(seqs, letters) * sum(map(len, seqs)) + 1
        return counts / counts.sum()
    return dict(zip(letters, np.log2(freqs(target_seqs) / freqs(background_seqs)).tolist()))


def score_auroc_report(run: Run, val: Rows, train_rows: Rows | None, seed: int = 0, max_rows: int = 200,
                       draws: int = DEFAULT_SCORE_DRAWS, min_positives: int = 3, max_targets: int = 20) -> dict:
    """Is score() worth anything? Per target with at least min_positives held-out label-1 rows (the
    max_targets with most): the AUROC of score(target) for its held-out peptides against held-out
    background peptides, and against other targets' held-out peptides, beside a composition-only scorer
    (log-odds of the target's training composition vs background's) on the same rows. At most max_rows
    rows per set, drawn with the seed."""
    if train_rows is None:
        return {"note": "no training rows to build the composition scorer from"}
    rng = np.random.default_rng(seed)
    pick = lambda seqs: [seqs[i] for i in sorted(rng.permutation(len(seqs))[:max_rows])]
    held_out = {}
    for label, target, seq in zip(val.labels.tolist(), val.targets, val.sequences):
        held_out.setdefault(target if label == 1 else None, []).append(seq)
    background = pick(held_out.pop(None, []))
    train_by_target = {}
    for target, seq in zip(train_rows.targets, train_rows.sequences):
        train_by_target.setdefault(target, []).append(seq)
    eligible = sorted((t for t, seqs in held_out.items() if len(seqs) >= min_positives and t in train_by_target
                       and t in run.vocab.targets), key=lambda t: (-len(held_out[t]), t))
    report = {"targets": {}, "skipped_targets": len(held_out) - min(len(eligible), max_targets),
              "min_positives": min_positives, "max_targets": max_targets, "max_rows": max_rows, "draws": draws}
    if not background or not eligible:
        return report
    background_bits = {}
    for target in eligible[:max_targets]:
        positives = pick(held_out[target])
        known = set(held_out[target]) | set(train_by_target[target])      # a peptide may bind several targets
        others = pick([s for t, seqs in held_out.items() if t != target for s in seqs if s not in known])
        log_odds = composition_log_odds(train_by_target[target], train_by_target.get("", []), run.vocab.letters)
        report["targets"][target] = {}
        for name, negatives in (("background", background), ("other_targets", others)):
            if not negatives:
                continue
            rows = positives + negatives
            fresh = sorted(set(rows) - set(background_bits))
            if fresh:
                background_bits.update(zip(fresh, condition_bits(run, fresh, 0, UNKNOWN_TARGET, draws, seed)))
            cond = condition_bits(run, rows, 1, run.vocab.target_id(target), draws, seed)
            scores = {"model": np.array([background_bits[s] for s in rows]) - cond,
                      "composition": np.array([sum(log_odds[c] for c in s) for s in rows])}
            report["targets"][target][name] = paired_auroc(scores, len(positives), seed=seed)
    return report


def format_score_auroc(report: dict) -> str:
    """score_auroc_report as readable text: one row per target and set of negatives."""
    out = ["Score ranking: AUROC of a target's score, its held-out peptides against others (0.5: chance; [95% "
           "bootstrap interval]),", "beside a composition-only scorer (log-odds of the target's training composition "
           "vs background's) on the same rows:"]
    if not report.get("targets"):
        return "\n".join(out + [f"  nothing to score: {report.get('note', 'no target with enough held-out rows')}"])
    out.append(f"  {'target':16}{'against':15}{'pos':>5}{'neg':>5}  {'model':21}{'composition':21}model - composition")
    ci = lambda x: f"[{x[0]:.2f}, {x[1]:.2f}]"
    for target, sets in report["targets"].items():
        for name, r in sets.items():
            m, c, d = r["model"], r["composition"], r["difference"]["composition"]
            verdict = ("model better" if d["interval"][0] > 0 else
                       "model worse" if d["interval"][1] < 0 else "no difference shown")
            out.append(f"  {target:16}{name.replace('_', ' '):15}{r['positives']:5}{r['negatives']:5}  "
                       f"{m['auroc']:.3f} {ci(m['interval']):15}{c['auroc']:.3f} {ci(c['interval']):15}"
                       f"{d['value']:+.3f} [{d['interval'][0]:+.2f}, {d['interval'][1]:+.2f}] {verdict}")
    if report["skipped_targets"]:
        out.append(f"  ({report['skipped_targets']} more target(s) with held-out rows not shown: fewer than "
                   f"{report['min_positives']} held-out peptides, no training rows, or past the first "
                   f"{report['max_targets']})")
    return "\n".join(out)


def motif_report(run: Run, background, train_rows: Rows | None, comps: dict, n_samples: int, n_per_target: int,
                 seed: int, guidance: float, motifs=None) -> dict:
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
    on_target = {t: generate(run, n=n_per_target, label=1, target=t, seed=seed, guidance=guidance) for t in motifs}
    training = {t: [s for s, x in zip(train_rows.sequences, train_rows.targets) if x == t] if train_rows else []
                for t in motifs}
    others = lambda sets, target: [s for t, seqs in sets.items() if t != target for s in seqs]
    out = {}
    for target, pattern in motifs.items():
        samples = on_target[target]
        matched = random_peptides(n_per_target, standard_composition(condition_composition(comps, 1, target)),
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


def evaluate(run_dir, data=None, n_samples: int = 1000, n_per_target: int = 200, seed: int = 0,
             guidance: float = DEFAULT_GUIDANCE, motifs=None, max_rows: int = 5000,
             n_draws: int = DEFAULT_NOISE_DRAWS, checkpoint: str = "best", device: str = "auto") -> dict:
    """Held-out likelihood, sample quality, order and conditioning, each beside a baseline matched to
    its condition and with its standard error. Writes evaluation.json in the run directory and returns
    the report (see format_report)."""
    if n_draws < 1:
        raise DataError(f"noise draws (n_draws, --noise-draws) must be at least 1, not {n_draws}")
    run = load_run(run_dir, checkpoint=checkpoint, device=device)
    val, train_rows = evaluation_split(run, data)
    report = {"run_dir": str(run_dir), "checkpoint": checkpoint, "guidance": guidance, "seed": seed,
              "heldout_rows": len(val.sequences),
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
    reports = [{"guidance": g, **sampling_report(run, val, train_rows, n_samples, n_per_target, seed, g, motifs)}
               for g in guidances]
    write_json(Path(run_dir) / "guidance_sweep.json", reports)
    return reports


def _pm(value, se, digits: int = 3, signed: bool = False) -> str:
    """'value ± se', '-' for a missing value."""
    if value is None:
        return "-"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if se is not None else "")


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


def format_guidance_sweep(reports: list) -> str:
    """One row per guidance value: label-1 sample quality beside the matched baseline's, k-mer order
    gain, then motif conditioning over targets (motif_summary: medians and counts; the data's beside), then
    the label-1 vs label-0 gaps in charge and hydropathy as a multiple of the training data's (1: as the data)."""
    out = ["| guidance | label-1 valid | unique | novel | JS comp | baseline JS comp | k-mer order gain x1e3 "
           "| motif rate on target | matched baseline | in background | targets enriched >2x "
           "| order enrichment | data's order enrichment | targets in order (rate > shuffled by 2 SE) "
           "| target samples unique | novel | charge gap / data's | hydropathy gap / data's |", "|---" * 18 + "|"]
    number = lambda v: "-" if v is None else f"{v:.2f}"
    for r in reports:
        s = r["samples"].get("1", {})
        m = s.get("model")
        cells = [f"{m[k]:.3f}" for k in ("validity", "uniqueness", "novelty", "js_composition")] if m else ["-"] * 4
        cells.append(f"{s['random_baseline']['js_composition']:.3f}" if m else "-")
        k = s.get("kmer_order", {}).get("model")
        cells.append(_pm(k["gain"] * 1e3, k["gain_se"] * 1e3, 2, signed=True) if k else "-")
        motifs = r["conditioning"].get("motifs", {})
        if motifs:
            t = motif_summary(motifs)
            cells += [number(t["target_rate"]), number(t["baseline_rate"]), number(t["background_rate"]),
                      f"{t['enriched_2x']}/{t['targets']}", number(t["order_enrichment"]),
                      number(t["training_order_enrichment"]), f"{t['in_order']}/{t['targets']}",
                      number(t["uniqueness"]), number(t["novelty"])]
        else:
            cells += ["-"] * 9
        gaps = r["conditioning"].get("property_gaps", {})
        cells += [number(gaps.get(p, {}).get("ratio")) for p in PROPERTY_SCALES]
        out.append(f"| {r['guidance']:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def format_report(report: dict) -> str:
    """The evaluation report as readable text: every verdict a difference or ratio with its standard
    error (±), "not distinguishable" within 2 SE."""
    lk = report["likelihood"]
    out = [f"Evaluation of {report['run_dir']} ({report['checkpoint']}.pt, guidance {report['guidance']}, "
           f"{report['heldout_rows']} held-out rows)", "",
           f"Held-out likelihood (bits per residue, lower is better; bound averaged over {lk['noise_draws']} noise "
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
                   f"{_pm(d['difference'], d['se'], signed=True):<17}"
                   f"{verdict(d['difference'], d['se'], 'beats composition', 'WORSE than composition'):<36}"
                   f"{_pm(o['difference'], o['se'], signed=True):<17}"
                   f"{verdict(-o['difference'], o['se'], 'uses residue order', 'PREFERS shuffled peptides')}")
    if not lk["targets"]:
        out.append(f"  (no target has {MIN_TARGET_ROWS} held-out rows: no per-target figures)")
    out += ["", "Samples vs held-out peptides (JS divergence in bits: 0 = same distribution; random_baseline: "
                "residues and lengths drawn from the same label's training composition and lengths"
            + ("" if report.get("matched_baseline", True) else ", POOLED: the training file is gone") + "):",
            f"  {'':24}{'validity':>9}{'unique':>9}{'novel':>9}{'JS comp':>9}{'JS len':>9}"]
    for label, s in report["samples"].items():
        for name in ("model", "random_baseline"):
            m = s[name]
            out.append(f"  label {label} {name:16}{m['validity']:9.3f}{m['uniqueness']:9.3f}{m['novelty']:9.3f}"
                       f"{m['js_composition']:9.4f}{m['js_length']:9.4f}")
        c = s["composition_vs_baseline"]
        out.append(f"  label {label} JS comp, model - baseline {_pm(c['difference'], c['se'], 4, signed=True)}: "
                   + verdict(c["difference"], c["se"], "samples closer to held-out composition than the baseline",
                             "samples FARTHER from held-out composition than the baseline"))
    out += ["", f"K-mer order (frequencies of residue pairs {'/'.join(map(str, PAIR_GAPS))} apart; squared distance "
                f"to held-out peptides x1e3, unbiased: 0 = same; shuffled: each peptide's residues in random order; "
                f"gain = shuffled - as is, > 0: order brings the peptides closer; a set without order gains 0):",
            f"  {'':24}{'distance':>10}{'shuffled':>10}  gain"]
    for label, s in report["samples"].items():
        for name, k in s["kmer_order"].items():
            if k is None:
                continue
            out.append(f"  label {label} {name:16}{k['distance'] * 1e3:10.3f}{k['shuffled_distance'] * 1e3:10.3f}  "
                       f"{_pm(k['gain'] * 1e3, k['gain_se'] * 1e3, signed=True):<17}"
                       + verdict(-k["gain"], k["gain_se"], "order brings them closer", "order takes them farther"))
    cond = report["conditioning"]
    if "label_js_composition" in cond:
        c = cond["label_js_composition"]
        out += ["", f"Label conditioning: JS(label-1 vs label-0 composition) samples {c['samples']:.4f}, "
                    f"held-out data {c['heldout_data']:.4f}"]
    if "property_gaps" in cond:
        gaps = cond["property_gaps"]
        out += [f"  label-1 minus label-0 mean, samples beside the {gaps['data']} peptides (excess > 0: the samples "
                f"exaggerate the data's gap, a caricature of the condition):"]
        for name in PROPERTY_SCALES:
            g = gaps[name]
            out.append(f"  {name:12} samples {_pm(g['samples_gap'], g['samples_gap_se'], signed=True):<17}"
                       f"data {_pm(g['data_gap'], g['data_gap_se'], signed=True):<17}"
                       f"ratio {_pm(g['ratio'], g['ratio_se'], 2):<13}"
                       f"excess {_pm(g['excess'], g['excess_se'], signed=True):<17}"
                       + verdict(g["excess"], g["excess_se"], "samples understate the data's gap",
                                 "samples EXAGGERATE the data's gap"))
    if cond.get("motifs"):
        out += ["", "Target conditioning: the fraction of peptides carrying the target's motif in the target's "
                    "samples, "
                    "a random baseline with the target's training composition and lengths, and background samples; "
                    "enrichment = target / background; order enr. = rate / rate with each peptide's residues shuffled "
                    f"({N_SHUFFLES} permutations; about 1 when composition alone makes the motif); specificity = rate "
                    "in the target's samples / in the other targets' samples; 'data': the target's training peptides; "
                    "± one SE; unique and novel: of the target's samples",
                f"  {'target':14}{'rate':>6}{'matched':>8}{'backgr.':>8}{'enrichment':>17}{'order enr.':>17}"
                f"{'data order enr.':>17}{'specificity':>17}{'data spec.':>17}{'data rate':>10}{'unique':>7}"
                f"{'novel':>7}"]
        for target, m in cond["motifs"].items():
            out.append(f"  {target:14}{m['target_rate']:6.3f}{m['baseline_rate']:8.3f}{m['background_rate']:8.3f}"
                       f"{_pm(m['enrichment'], m['enrichment_se'], 1):>17}"
                       f"{_pm(m['order_enrichment'], m['order_enrichment_se'], 1):>17}"
                       f"{_pm(m['training_order_enrichment'], m['training_order_enrichment_se'], 1):>17}"
                       f"{_pm(m['specificity'], m['specificity_se'], 1):>17}"
                       f"{_pm(m['training_specificity'], m['training_specificity_se'], 1):>17}"
                       f"{_pm(m['training_rate'], None, 2):>10}{m['uniqueness']:7.3f}{m['novelty']:7.3f}")
    if "score_auroc" in report:
        out += ["", format_score_auroc(report["score_auroc"])]
    return "\n".join(out)


# =============================================================================================
# Plots
# =============================================================================================


def _pyplot():
    """pyplot without a display where there is none (CLI, CI); notebooks keep their inline backend."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_evaluation(report: dict, out=None):
    """Amino-acid composition (held-out data vs samples vs the random floor) and length distributions,
    one row per label. Saved as evaluation.png in the run directory unless `out` says otherwise."""
    plt = _pyplot()
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


def plot_lengths(rows: Rows, out=None):
    """Length histograms of both labels (fractions), side by side."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    lengths = np.fromiter(map(len, rows.sequences), dtype=np.int64, count=len(rows.sequences))
    for label, shift in ((0, -0.2), (1, 0.2)):
        counts = np.bincount(lengths[rows.labels == label], minlength=MAX_LEN + 1)
        ax.bar(np.arange(MAX_LEN + 1) + shift, counts / max(counts.sum(), 1), width=0.4,
               label=f"label {label} ({counts.sum():,} rows)")
    ax.set_xlim(MIN_LEN - 1, MAX_LEN + 1)
    ax.set_xlabel("peptide length")
    ax.set_ylabel("fraction")
    ax.legend()
    fig.tight_layout()
    if out:
        fig.savefig(out, dpi=100)
    return fig


def plot_convergence(run_dir, out: str | None = None):
    """convergence.png: training ce / vb / loss per step (smoothed) and held-out per epoch, with the
    ln K line (the ce of a uniform guess). Returns the figure."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    hist = json.loads((run_dir / "history.json").read_text())
    steps = np.genfromtxt(run_dir / "history_steps.csv", delimiter=",", names=True, ndmin=1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
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
    fig.tight_layout()
    fig.savefig(out or run_dir / "convergence.png", dpi=110)
    plt.close(fig)          # the notebook shows the saved PNG; an open figure per epoch would pile up
    return fig


def zip_run(run_dir, checkpoints: bool = True) -> Path:
    """run_dir as a .zip beside it, for download: <run>.zip with everything, or with checkpoints=False
    <run>_model.zip without last.pt and best.pt (the optimizer state, only needed to resume), which keeps
    model.pt (see export_model), the history, the plots and the evaluation."""
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


# =============================================================================================
# Command line
# =============================================================================================


def add_run_args(p):
    p.add_argument("--run-name", default=None, help="run directory name (default: the preset's name)")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where runs live (default: checkpoints/)")


def cmd_train(args):
    overrides = {k: getattr(args, k) for k in ("epochs", "max_steps", "batch_size", "lr", "seed", "device",
                                             "save_every_minutes", "dim", "n_layers", "n_heads", "n_steps",
                                             "hybrid_coeff", "warmup", "cond_drop", "label1_repeat", "rotary",
                                             "termini", "ema_decay", "data")}
    overrides["compile"] = args.compile or None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size and world > 1:                   # under torchrun --batch-size is per process
        overrides["batch_size"] = args.batch_size * world
    run_dir = run_dir_for(args.run_name or args.preset or "small", args.checkpoint_dir)
    preset, saved = args.preset or "small", run_dir / "config.json"
    if args.resume and saved.exists():                  # a resumed run keeps its settings, but for the flags given
        base = {**LEGACY_SETTINGS, **json.loads(saved.read_text())}
        preset = args.preset or base["preset"]
        overrides = {**{k: v for k, v in base.items() if k != "preset"},
                     **{k: v for k, v in overrides.items() if v is not None}}
    cfg = make_config(preset, **overrides)
    require_gpu(cfg.preset, allow_cpu=cfg.device == "cpu")
    try:
        summary = train(cfg, run_dir, resume=args.resume, skip_invalid=args.skip_invalid,
                        progress=not args.no_progress, verbose=args.verbose)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if summary and int(os.environ.get("RANK", "0")) == 0:
        log(f"done: {summary['step']} steps, best held-out loss {summary['best_val_loss']:.4f}; "
            f"checkpoints and convergence.png in {run_dir}")


def cmd_generate(args):
    run_dir = run_dir_for(args.run_name, args.checkpoint_dir)
    if args.verbose and args.parent is None:
        raise DataError("--verbose adds each variant's identity to its parent: it goes with --from")
    peptides = generate(run_dir, n=args.n, label=args.label, target=args.target, min_length=args.min_length,
                        max_length=args.max_length, seed=args.seed, guidance=args.guidance,
                        standard_only=not args.allow_rare, checkpoint=args.checkpoint, device=args.device,
                        parent=args.parent, strength=args.strength, template=args.template)
    if args.verbose:
        parent = args.parent.strip().upper()
        sys.stdout.write("peptide\tidentity_to_parent\n"
                         + "".join(f"{p}\t{identity(p, parent):.3f}\n" for p in peptides))
        log(f"mean identity to {parent}: {np.mean([identity(p, parent) for p in peptides]):.3f}")
    else:
        sys.stdout.write("".join(p + "\n" for p in peptides))


def cmd_score(args):
    run = load_run(run_dir_for(args.run_name, args.checkpoint_dir), checkpoint=args.checkpoint, device=args.device)
    run.vocab.target_id(args.target)                    # an unknown target fails before the input is read
    name, entries = read_peptides(args.input)
    if not entries:
        raise DataError(f"{name}: no peptides")
    problems = [(line, why) for line, seq in entries if (why := peptide_problem(seq, run.vocab.letters))]
    if problems and not args.skip_invalid:
        raise DataError(summarize_problems(name, problems)
                        + "\nFix the input, or pass --skip-invalid to score the others (bad lines get a row saying why).")
    bad = dict(problems)
    results = iter(score(run, [seq for line, seq in entries if line not in bad], args.target, args.label,
                         args.draws, args.seed))
    rows = [{"peptide": seq, "skipped": f"line {line}: {bad[line]}"} if line in bad else next(results)
            for line, seq in entries]
    print(format_scores(rows))
    if problems:
        log(f"skipped {len(problems)} of {len(entries)} peptides (--skip-invalid); their rows say why")


def cmd_evaluate(args):
    run_dir = run_dir_for(args.run_name, args.checkpoint_dir)
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
        out[name] = {**asdict(cfg), "params": count_params(X0Transformer(cfg, vocab.size, vocab.num_targets))}
    print(json.dumps(out, indent=1))


def build_parser():
    parser = argparse.ArgumentParser(prog="mimir_core.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train or resume a model")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="model size (default: small, or the run's own preset with --resume)")
    p.add_argument("--data", default=None, help="CSV (label,target,sequence[,source]); default: the demo data")
    add_run_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-name from its last.pt")
    p.add_argument("--skip-invalid", action="store_true", help="train on the valid rows, reporting the rest")
    for flag, typ in (("--epochs", int), ("--max-steps", int), ("--lr", float),
                      ("--seed", int), ("--save-every-minutes", float), ("--dim", int), ("--n-layers", int),
                      ("--n-heads", int), ("--n-steps", int), ("--hybrid-coeff", float), ("--warmup", int),
                      ("--cond-drop", float), ("--label1-repeat", int), ("--ema-decay", float)):
        p.add_argument(flag, type=typ, default=None, help="override the preset")
    p.add_argument("--rotary", action=argparse.BooleanOptionalAction, default=None,
                   help="rotary attention (default: on)")
    p.add_argument("--termini", action=argparse.BooleanOptionalAction, default=None,
                   help="embed each residue's distance from both peptide ends (default: on)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="override the preset's batch (256). Under torchrun with N processes each process takes "
                        "batch/N rows of every global batch; an explicit --batch-size is per process.")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; slower start)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="print a line per epoch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="print generated peptides, one per line")
    add_run_args(p)
    p.add_argument("-n", type=int, default=100, help="how many peptides (default 100)")
    p.add_argument("--label", type=int, default=1, choices=[0, 1], help="1 interacting (default), 0 background")
    p.add_argument("--target", default=None, help="target accession (label 1); default: any target")
    p.add_argument("--min-length", type=int, default=MIN_LEN)
    p.add_argument("--max-length", type=int, default=MAX_LEN)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help=f"classifier-free guidance S (0 = plain conditional; default {DEFAULT_GUIDANCE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--allow-rare", action="store_true", help="allow X/B/Z/U... in outputs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    seed_peptide = p.add_mutually_exclusive_group()
    seed_peptide.add_argument("--from", dest="parent", default=None, metavar="PEPTIDE",
                              help="write variants of this peptide (of its length)")
    seed_peptide.add_argument("--template", default=None,
                              help="keep its residue letters, write the positions marked x (e.g. xxPPxYxx)")
    p.add_argument("--strength", type=float, default=None,
                   help=f"with --from: how far variants may move, 0 (the parent) to 1 (from pure noise); "
                        f"default {DEFAULT_STRENGTH}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="with --from: a second column with each variant's identity to the parent")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("score", help="score peptides for a target: bits the condition adds over background")
    add_run_args(p)
    p.add_argument("--target", default=None, help="target accession (default: any target)")
    p.add_argument("--label", type=int, default=1, help="the condition's label (1; background is the reference)")
    p.add_argument("--input", default=None, help="one peptide per line, FASTA or CSV with a sequence column "
                                                 "(default: standard input)")
    p.add_argument("--skip-invalid", action="store_true", help="score the valid peptides; bad lines get a row "
                                                                "saying why")
    p.add_argument("--draws", type=int, default=DEFAULT_SCORE_DRAWS,
                   help=f"noise draws per peptide (default {DEFAULT_SCORE_DRAWS}; more: steadier, slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="held-out likelihood, sample quality and conditioning vs baselines")
    add_run_args(p)
    p.add_argument("--data", default=None, help="score this file instead of the run's held-out split")
    p.add_argument("-n", type=int, default=1000, help="samples per condition (default 1000)")
    p.add_argument("--guidance", type=float, nargs="+", default=[DEFAULT_GUIDANCE],
                   help=f"classifier-free guidance (default {DEFAULT_GUIDANCE}); several values print a comparison table")
    p.add_argument("--motifs", default=None, help="motifs JSON (target -> regex); default: the demo's, for demo runs")
    p.add_argument("--noise-draws", type=int, default=DEFAULT_NOISE_DRAWS,
                   help=f"noise draws averaged per term of the likelihood bound (default {DEFAULT_NOISE_DRAWS}; "
                        f"more: smaller error bars, slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("verify-data", help="check a dataset against the contract; exit 0 only if all holds")
    p.add_argument("path", help="CSV or CSV.gz with header label,target,sequence[,source]")
    p.set_defaults(func=cmd_verify_data)

    p = sub.add_parser("presets", help="print each preset's settings and parameter count as JSON")
    p.add_argument("--vocab-size", type=int, default=25, help="tokens including PAD (real data: 25)")
    p.add_argument("--num-targets", type=int, default=800)
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "run_name", "x") is None and args.command != "train":
        build_parser().error("--run-name is required")
    try:
        args.func(args)
    except (DataError, NonFiniteLoss, OSError) as e:     # OSError: a disk that is full, read-only, missing
        log(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
