"""Measure how fast this machine loads data, trains each preset and samples.

    python scripts/benchmark.py [--device auto|cpu|cuda] [--presets small,medium,large] [--rows N] [--full] [--out MD]

Everything is timed through the functions training uses (load_rows, Vocab, DeviceData,
epoch_permutation, Trainer.train_step and on a GPU CudaGraphStep, sample_tokens, score), on a synthetic
CSV of N unique rows: random peptides with lengths uniform over 4-20, 4,000 of them label 1 over 800
targets. The data path, each preset's step and sampling are timed alternately with a straightforward
implementation of the same work (scripts/reference_impl.py), so every speed-up comes from this run on
this machine. Prints a Markdown table (BENCHMARKS.md explains it) and writes it to --out.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimir_core import (DEFAULT_SCORE_DRAWS, DEVICES, MAX_LEN, MIN_LEN, PRESETS, RESIDUES,  # noqa: E402
                        CudaGraphStep, DeviceData, Rows, Run, Trainer, Vocab, amp_dtype, count_params, device_arg,
                        epoch_permutation, load_rows, log, make_config, new_run, pick_device, sample_tokens, score)
from reference_impl import (PeptideDataset, ReferenceTrainer, endless_batches, reference_model,  # noqa: E402
                            reference_sample)

BENCH_BATCH = 256
BENCH_REFERENCES = 4        # known binders a row reads in the step that reads them (--references)
REFERENCE_BATCHES = 100     # the reference data path's batches per timing: about half a second on a CPU
REFERENCE_NOTE = ("Reference: scripts/reference_impl.py, timed in turns with Mimir in this run: a per-sample "
                  "Dataset and DataLoader, nn.MultiheadAttention over the padded batch, default AdamW, .item() "
                  "every step. Its model is Mimir's plain model (learned positions only), so each training "
                  "step's speed-up sets Mimir's shipped step, with rotary attention, the C-terminal embedding and "
                  "the preset's moving average of the weights, against a model without them: if anything, it "
                  "understates Mimir's lead.")
GUIDED = 2.0            # guided sampling runs the conditional and unconditional model together: twice the rows
BENCH_STEPS = {"tiny": (3, 20), "small": (3, 10), "medium": (2, 5), "large": (1, 3)}  # (warm-up, timed)
SCORE_PEPTIDES = 512                        # scored per timing; the table also gives the time for 10,000
GPU_PEAKS = {"T4 (65 TFLOP/s fp16)": 65e12, "A100 (312 TFLOP/s bf16)": 312e12}


def synthetic_csv(path, n: int, n_interacting: int = 4000, n_targets: int = 800, seed: int = 0) -> Path:
    """A valid dataset of n distinct random peptides (lengths 4-20); the first n_interacting are label 1."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(RESIDUES.encode(), dtype=np.uint8)
    seqs = np.array([], dtype=f"S{MAX_LEN}")
    while len(seqs) < n:                        # draw, drop repeats (short peptides collide), top up
        m = int(1.1 * (n - len(seqs))) + 1000
        tok = letters[rng.integers(0, len(letters), (m, MAX_LEN))]
        tok[np.arange(MAX_LEN)[None] >= rng.integers(MIN_LEN, MAX_LEN + 1, m)[:, None]] = 0
        fresh = np.concatenate([seqs, tok.view(f"S{MAX_LEN}").ravel()])
        _, first = np.unique(fresh, return_index=True)
        seqs = fresh[np.sort(first)]
    seqs = seqs[:n].astype(f"U{MAX_LEN}").tolist()
    k = min(n_interacting, n // 2)
    lines = [f"1,T{i % n_targets:04d},{s}" for i, s in enumerate(seqs[:k])] + [f"0,,{s}" for s in seqs[k:]]
    Path(path).write_text("label,target,sequence\n" + "\n".join(lines) + "\n")
    return Path(path)


def _timed(fn, device) -> float:
    """Seconds for fn(), with the device's queue drained before and after."""
    _drain(device)
    t0 = time.perf_counter()
    fn()
    _drain(device)
    return time.perf_counter() - t0


def _drain(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, repeats: int, device) -> dict:
    """{name: median seconds of fns[name]()}, each timed `repeats` times in turns (A, B, C, then C, B, A, ...):
    a shared machine's speed drifts from one second to the next, and only figures timed side by side make
    a ratio that does not carry that drift."""
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            times[name].append(_timed(fns[name], device))
    return {name: float(np.median(t)) for name, t in times.items()}


def _flop_counter():
    """torch's FLOP counter (matmuls and attention, forward and backward), taught the CPU attention kernel."""
    from torch.utils import flop_counter as fc
    aten, mapping = torch.ops.aten, {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping = {aten._scaled_dot_product_flash_attention_for_cpu:
                   lambda q, k, v, *a, **kw: fc.sdpa_flop_count(q, k, v),
                   aten._scaled_dot_product_flash_attention_for_cpu_backward:
                   lambda grad_out, q, k, v, *a, **kw: fc.sdpa_backward_flop_count(grad_out, q, k, v)}
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)


SYNC_EVENTS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize")


def profile_step(trainer, idx, step=None) -> dict:
    """Operators, GPU kernels, their summed time and host syncs in one train_step (torch.profiler), or in
    step() when given (the graph step). A sync is a read of a tensor's value by the host (.item(), bool(),
    .tolist(), nonzero...). The CPU's fused AdamW reads its step counters, which live in host memory there,
    inside its kernel: those are counted apart."""
    from torch.profiler import ProfilerActivity, profile, record_function
    cuda = trainer.device.type == "cuda"
    step = step or (lambda: trainer.train_step(*trainer.train_data.batch(idx)))
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        with record_function("mimir_train_step"):
            step()
        _drain(trainer.device)

    def ancestors(e):
        while e is not None:
            yield e.name
            e = e.cpu_parent

    inside = [e for e in prof.events() if "mimir_train_step" in ancestors(e)]
    syncs = [e for e in inside if e.name in SYNC_EVENTS]
    counters = [e for e in syncs if not cuda and "aten::_fused_adamw_" in ancestors(e)]
    sources = {}
    for e in syncs:
        if e not in counters:
            op = next((n for n in ancestors(e.cpu_parent) if n.startswith("aten::")), e.name)
            sources[op] = sources.get(op, 0) + 1
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {"ops": sum(e.name.startswith("aten::") for e in inside), "syncs": len(syncs) - len(counters),
            "sync_sources": sources, "optimizer_counter_reads": len(counters), "kernels": len(kernels),
            "kernel_s": sum(e.time_range.elapsed_us() for e in kernels) / 1e6}


def plain_model_step(trainer, step):
    """step() with the plain model: learned absolute positions only (no rotary attention, no C-terminal
    embedding), the model of before the order-aware levers."""
    models = [m for m in (trainer.model, trainer.ema) if m is not None]     # the moving average mirrors the model
    kept = [(m.rotary, m.cterm_emb) for m in models]
    for m in models:
        m.rotary, m.cterm_emb = False, None
    try:
        step()
    finally:
        for m, (rotary, cterm_emb) in zip(models, kept):
            m.rotary, m.cterm_emb = rotary, cterm_emb


def padded_step(trainer, step):
    """step() computing PAD rows, as a GPU does (see Residues in mimir_core.py)."""
    trainer.model.pack_residues = False
    try:
        step()
    finally:
        trainer.model.pack_residues = None


def bench_preset(name: str, rows: Rows, device, steps: int, warmup: int, dataset: PeptideDataset) -> dict:
    """A Trainer of preset `name` at batch 256: set-up time; the median times, after warm-up, of its step,
    of the same step with the plain model, on the CPU with PAD rows computed, of a model that also reads
    BENCH_REFERENCES known binders of each row's target (cfg.references), and of the reference's step
    (scripts/reference_impl.py: the plain model, holding the step's weights less the C-terminal embedding,
    reading `dataset`), all timed in turns so that they see the same machine load; FLOPs of a step as
    executed and padded, operators and syncs, peak memory."""
    cfg = make_config(name, device=str(device), batch_size=BENCH_BATCH)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp) / name, rows=rows)
        setup = time.perf_counter() - t0
        trainer.model.train()
        perm = epoch_permutation(len(trainer.train_data), cfg.seed, 0, trainer.device)
        batches = (perm[b * BENCH_BATCH:(b + 1) * BENCH_BATCH] for b in itertools.cycle(range(len(perm) // BENCH_BATCH)))
        step = lambda: trainer.train_step(*trainer.train_data.batch(next(batches)))
        reference = ReferenceTrainer(cfg, trainer.vocab, dataset, trainer.device, trainer.model.state_dict())
        known = Trainer(make_config(name, device=str(device), batch_size=BENCH_BATCH, references=BENCH_REFERENCES,
                                    id_drop=0.5), Path(tmp) / f"{name}_references", rows=rows)
        known.model.train()
        known_step = lambda: known.train_step(*known.train_data.batch(next(batches)))     # the same split
        for _ in range(warmup):                         # the plain and padded steps share the step's state
            step()
            reference.step()
            known_step()
        variants = {"step_s": step, "plain_step_s": lambda: plain_model_step(trainer, step),
                    "reference_step_s": reference.step, "references_step_s": known_step}
        if device.type == "cpu":                        # on a GPU every step computes PAD rows
            variants["padded_step_s"] = lambda: padded_step(trainer, step)
        medians = interleaved(variants, steps, trainer.device)
        medians.setdefault("padded_step_s", medians["step_s"])
        del reference, variants, known, known_step
        flops = {}
        for packed in (None, False):                    # as executed, then padded (what a GPU computes)
            trainer.model.pack_residues = packed
            with _flop_counter() as counter:
                step()
            flops[packed] = counter.get_total_flops()
        trainer.model.pack_residues = None
        out = {"params": count_params(trainer.model), "setup_s": setup, **medians,
               "flops": flops[None], "padded_flops": flops[False], **profile_step(trainer, next(batches))}
        if device.type == "cuda":                       # the same step replayed as one CUDA graph
            graph = CudaGraphStep(trainer)
            graph_step = lambda: graph(next(batches))
            for _ in range(graph.warmup + 1 + warmup):  # its eager warm-up, the capture, warm replays
                graph_step()
            out["graph_step_s"] = float(np.median([_timed(graph_step, trainer.device) for _ in range(steps)]))
            out["graph"] = profile_step(trainer, None, step=graph_step)
            del graph, graph_step
        del trainer, step
    out["peak_bytes"] = peak_memory(device)
    return out


def bench_data_path(data: DeviceData, dataset: PeptideDataset, device, repeats: int) -> dict:
    """What the training loop does for data, alone: an epoch of one epoch_permutation and a DeviceData
    gather per batch, timed in turns with REFERENCE_BATCHES batches of the reference's DataLoader."""
    n_batches = len(data) // BENCH_BATCH
    epochs = itertools.count()

    def epoch():
        perm = epoch_permutation(len(data), 0, next(epochs), device)
        for b in range(n_batches):
            data.batch(perm[b * BENCH_BATCH:(b + 1) * BENCH_BATCH])

    loader = endless_batches(dataset, device)
    next(loader)                                        # the DataLoader's iterator and its epoch's shuffle
    n_reference = min(REFERENCE_BATCHES, n_batches)
    medians = interleaved({"mimir": epoch, "reference": lambda: [next(loader) for _ in range(n_reference)]},
                          repeats, device)
    return {"samples_per_s": n_batches * BENCH_BATCH / medians["mimir"],
            "batch_ms": 1e3 * medians["mimir"] / n_batches,
            "reference_samples_per_s": n_reference * BENCH_BATCH / medians["reference"]}


def fresh_run(preset: str, vocab: Vocab, device) -> Run:
    """A freshly initialised model as a Run: speed does not depend on the weights."""
    return new_run(make_config(preset, device=str(device)), vocab, device)


def bench_sampling(vocab: Vocab, device, repeats: int, guidance: float, n: int = 256) -> tuple:
    """(seconds, FLOPs, the reference's seconds or None) for sample_tokens to write n label-1 peptides of
    lengths 4-20 with a freshly initialised small model; medians of `repeats`. Plain conditional sampling
    (guidance 0) is timed in turns with the reference's sampler holding the same weights (less the
    C-terminal embedding, which its plain model does not have)."""
    run = fresh_run("small", vocab, device)
    lengths = np.random.default_rng(0).integers(MIN_LEN, MAX_LEN + 1, n)
    g = torch.Generator(device=device).manual_seed(0)
    samplers = {"mimir": lambda: sample_tokens(run, lengths, 1, 1, guidance, generator=g)}
    if not guidance:
        model = reference_model(run.cfg, vocab, run.model.state_dict(), device).eval()
        samplers["reference"] = lambda: reference_sample(model, run.diffusion, vocab, lengths, 1, 1, generator=g)
    with _flop_counter() as counter:
        samplers["mimir"]()
    for sample in samplers.values():                    # warm-up
        sample()
    medians = interleaved(samplers, repeats, device)
    return medians["mimir"], counter.get_total_flops(), medians.get("reference")


def bench_scoring(vocab: Vocab, device, repeats: int, n: int = SCORE_PEPTIDES) -> float:
    """Seconds for score() of n peptides of lengths 4-20 for a target (default draws) with a freshly
    initialised small model; median of `repeats`."""
    run = fresh_run("small", vocab, device)
    rng = np.random.default_rng(0)
    letters = np.array(list(RESIDUES))
    peptides = ["".join(rng.choice(letters, size=k)) for k in rng.integers(MIN_LEN, MAX_LEN + 1, n)]
    return float(np.median([_timed(lambda: score(run, peptides, vocab.targets[0]), device) for _ in range(repeats)]))


def bench_matmul(device, repeats: int) -> tuple:
    """(FLOP/s, what): one large square matmul in the training precision, the practical ceiling."""
    dtype = amp_dtype(device) or torch.float32
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    seconds = float(np.median([_timed(lambda: a @ b, device) for _ in range(repeats)]))
    return 2 * n ** 3 / seconds, f"{n}x{n}x{n} {str(dtype).replace('torch.', '')}"


def peak_memory(device) -> int:
    """Bytes: the peak CUDA allocation, or the process's peak resident set on the CPU (it only grows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024          # Linux reports KiB


def _si(x: float, unit: str = "") -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".strip()


def _secs(s: float) -> str:
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def _graph_rows(name: str, p: dict) -> list:
    """The step replayed as one CUDA graph beside the eager one, and each step's GPU kernel time beside its
    wall time: kernel time over wall time near 1 means the GPU is busy, far below 1 that it waits on launches."""
    def busy(kernel_s, wall_s):
        return f"{_secs(kernel_s)} of {_secs(wall_s)} ({kernel_s / wall_s:.0%})"
    g = p["graph"]
    return [(f"{name}: the same step as one CUDA graph", _secs(p["graph_step_s"]), "",
             f"{p['step_s'] / p['graph_step_s']:.2f}x faster than the eager step"),
            (f"{name}: GPU kernel time per step (eager; graph)", f"{busy(p['kernel_s'], p['step_s'])}; "
             f"{busy(g['kernel_s'], p['graph_step_s'])}", "", ""),
            (f"{name}: operators per graph step", f"{g['ops']:,} ({g['kernels']:,} GPU kernels, {g['syncs']} syncs)",
             "", "")]


def format_benchmark(r: dict) -> str:
    """The measurements as a Markdown table (measure | this machine | reference | speed-up), then the
    FLOP-based lower bound of an epoch on a T4 and an A100: arithmetic, not measurement. The reference
    column is the straightforward implementation timed in turns with Mimir in the same run (REFERENCE_NOTE)."""
    speedup = lambda ours_s, ref_s: f"{ref_s / ours_s:.2f}x"          # > 1: faster than the reference
    epoch_steps = 1_000_000 / BENCH_BATCH
    ceiling, ceiling_what = r["matmul"]
    ld, dp, n = r["loading"], r["data_path"], r["rows"]
    gpu = r["device"].startswith("cuda")
    rows = [("device", f"{r['device']} ({r['precision']})", "", ""), ("hardware", r["hardware"], "", ""),
            ("software", r["software"], "", ""),
            ("matmul ceiling", f"{_si(ceiling, 'FLOP/s')} ({ceiling_what})", "", ""),
            (f"load + validate + tokenize {n:,} rows", f"{_secs(sum(ld.values()))} (load_rows {_secs(ld['load'])}, "
             f"vocabulary {_secs(ld['vocab'])}, encode {_secs(ld['encode'])})", "", ""),
            (f"{n:,} rows onto the device", _secs(dp["to_device_s"]), "", ""),
            ("data path: permutation + batch gather", f"{_si(dp['samples_per_s'])} samples/s ({dp['batch_ms']:.3f} "
             f"ms a batch)", f"{_si(dp['reference_samples_per_s'])} samples/s",
             f"{dp['samples_per_s'] / dp['reference_samples_per_s']:.1f}x")]
    first = next(iter(r["presets"].values()), None)
    if first:
        rows.append((f"Trainer set-up on {n:,} rows (split, device data, statistics, model)",
                     _secs(first["setup_s"]), "", ""))
    for name, p in r["presets"].items():
        ref = p["reference_step_s"]
        syncs = f"{p['syncs']}" + "".join(f", {k} x {op}" for op, k in p["sync_sources"].items())
        if p["optimizer_counter_reads"]:
            syncs += f" (+ {p['optimizer_counter_reads']} reads of AdamW step counters kept in host memory)"
        rows += [(f"{name} ({p['params'] / 1e6:.2f}M params): training step", _secs(p["step_s"]),
                  _secs(ref), speedup(p["step_s"], ref)),
                 (f"{name}: the same step without rotary attention and C-terminal embedding",
                  _secs(p["plain_step_s"]), "", f"{p['step_s'] / p['plain_step_s']:.2f}x the cost of the plain step"),
                 (f"{name}: the same step reading {BENCH_REFERENCES} known binders of each row's target "
                  f"(--references {BENCH_REFERENCES})", _secs(p["references_step_s"]), "",
                  f"{p['references_step_s'] / p['step_s']:.2f}x the cost of the id-only step"),
                 *([(f"{name}: the same step computing PAD rows (as on a GPU)", _secs(p["padded_step_s"]), "",
                     f"{p['padded_step_s'] / p['step_s']:.2f}x from skipping them")] if not gpu else []),
                 (f"{name}: samples/s; epoch of 1,000,000 rows", f"{_si(BENCH_BATCH / p['step_s'])}; "
                  f"{_secs(epoch_steps * p['step_s'])}", f"{_si(BENCH_BATCH / ref)}; {_secs(epoch_steps * ref)}", ""),
                 (f"{name}: FLOPs per step (executed; padded)", f"{_si(p['flops'], 'FLOP')}; "
                  f"{_si(p['padded_flops'], 'FLOP')}", "", ""),
                 (f"{name}: achieved FLOP/s", f"{_si(p['flops'] / p['step_s'], 'FLOP/s')} "
                  f"({100 * p['flops'] / p['step_s'] / ceiling:.0f}% of the matmul ceiling)", "", ""),
                 (f"{name}: operators per step", f"{p['ops']:,}" + (f" ({p['kernels']:,} GPU kernels)" if gpu else ""),
                  "", ""),
                 *(_graph_rows(name, p) if "graph_step_s" in p else []),
                 (f"{name}: host syncs per step", syncs, "", ""),
                 (f"{name}: peak memory", _si(p["peak_bytes"], "B") + ("" if gpu else " (process peak so far)"), "", "")]
    if "small" in r["presets"]:
        rows.append(("data path share of a small step", f"{dp['batch_ms'] / 1e3 / r['presets']['small']['step_s']:.2%}",
                     "", ""))
    for guidance, (s, flops, ref) in r["sampling"].items():
        rows.append((f"sampling 256 peptides (small, guidance {guidance:g})", f"{_secs(s)} ({_si(256 / s)} "
                     f"peptides/s, {_si(flops, 'FLOP')})", _secs(ref) if ref else "", speedup(s, ref) if ref else ""))
    s = r["scoring"]
    rows.append((f"score {SCORE_PEPTIDES:,} peptides for a target (small, --draws {DEFAULT_SCORE_DRAWS})",
                 f"{_secs(s)} ({_si(SCORE_PEPTIDES / s)} peptides/s; 10,000 in {_secs(1e4 * s / SCORE_PEPTIDES)})",
                 "", ""))
    table = ["| measure | this machine | reference | speed-up |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    table += ["", REFERENCE_NOTE]
    table += ["", "FLOP-based lower bound of an epoch of 1,000,000 rows at batch 256 on a GPU (padded FLOPs "
              "over peak tensor throughput; arithmetic, not measurement):", "",
              "| preset | padded FLOPs per epoch | " + " | ".join(GPU_PEAKS) + " |", "|---|---|" + "---|" * len(GPU_PEAKS)]
    for name, p in r["presets"].items():
        epoch_flops = p["padded_flops"] * epoch_steps
        table.append(f"| {name} | {_si(epoch_flops, 'FLOP')} | "
                     + " | ".join(_secs(epoch_flops / peak) for peak in GPU_PEAKS.values()) + " |")
    return "\n".join(table)


def _cpu_name() -> str:
    """The processor's model name (Linux), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")] if cpuinfo.exists() else []
    return names[0] if names else platform.processor()


def benchmark(device: str = "auto", presets=("small", "medium", "large"), n_rows: int = 1_000_000,
              full: bool = False, out=None) -> str:
    """Measure everything (progress on stderr), write the Markdown table to `out` if given, return it."""
    dev = pick_device(device)
    repeats = 4 if full else 1
    r = {"device": str(dev), "precision": str(amp_dtype(dev) or torch.float32).replace("torch.", ""),
         "hardware": (torch.cuda.get_device_name(dev) + ", " if dev.type == "cuda" else "")
         + f"{_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
         "software": f"torch {torch.__version__}, python {sys.version.split()[0]}, numpy {np.__version__}",
         "rows": n_rows, "presets": {}}
    log(f"benchmark on {dev}: matmul ceiling, then a {n_rows:,}-row synthetic CSV")
    r["matmul"] = bench_matmul(dev, repeats=5 * repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic_csv(Path(tmp) / "data.csv", n_rows)
        t = {}
        t0 = time.perf_counter()
        rows = load_rows(path)
        t["load"], t0 = time.perf_counter() - t0, time.perf_counter()
        vocab = Vocab.from_rows(rows)
        t["vocab"], t0 = time.perf_counter() - t0, time.perf_counter()
        vocab.encode(rows.sequences)
        t["encode"] = time.perf_counter() - t0
        r["loading"] = t
    log("benchmark: data path, in turns with a DataLoader")
    t0 = time.perf_counter()
    data = DeviceData(rows, vocab, np.arange(len(rows.sequences)), dev)
    _drain(dev)
    to_device = time.perf_counter() - t0
    dataset = PeptideDataset(rows, vocab)               # the reference's data, also read by its steps below
    r["data_path"] = {"to_device_s": to_device, **bench_data_path(data, dataset, dev, 3 * repeats)}
    del data
    for name in presets:
        warmup, steps = BENCH_STEPS.get(name, (2, 5))
        log(f"benchmark: preset {name}, {warmup} + {steps * repeats} steps, each beside the reference's")
        r["presets"][name] = bench_preset(name, rows, dev, steps * repeats, warmup, dataset)
    log("benchmark: sampling")
    r["sampling"] = {g: bench_sampling(vocab, dev, 3 * repeats, g) for g in (0.0, GUIDED)}
    log("benchmark: scoring")
    r["scoring"] = bench_scoring(vocab, dev, repeats)
    table = format_benchmark(r)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")
    return table


def build_parser():
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", type=device_arg, help=f"one of {DEVICES} (default auto)")
    p.add_argument("--presets", default="small,medium,large", help="comma-separated presets to time")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic dataset (default 1,000,000)")
    p.add_argument("--full", action="store_true", help="four times the repetitions: slower, steadier figures")
    p.add_argument("--out", default="checkpoints/benchmark.md", help="where to write the table ('' for nowhere)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        log(f"error: --presets takes a comma-separated list of {', '.join(PRESETS)} (got '{args.presets}')")
        sys.exit(2)
    print(benchmark(args.device, presets, args.rows, args.full, args.out))
    if args.out:
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
