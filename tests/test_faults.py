"""Faults and bad input: fuzzed CSVs, Ctrl-C and kills mid-step, non-finite gradients, refused and
corrupt checkpoints, out-of-range settings, and a disk that refuses to write."""
import contextlib
import errno
import gzip
import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mimir_core as mc
from conftest import write_fixture

ROOT = Path(__file__).resolve().parents[1]


def tiny(data, **kw):
    """The tiny preset; an epoch is one pass over the rows (label1_repeat 1): 36 steps on the fixture."""
    return mc.make_config("tiny", data=str(data), **{"label1_repeat": 1, **kw})


def run_main(*argv, main=None) -> tuple[int, str, str]:
    """mimir_core.main (or another command's `main`) in this process: (exit code, stdout, stderr). Anything but
    SystemExit escapes."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            (main or mc.main)([str(a) for a in argv])
        except SystemExit as e:
            code = e.code or 0
    return code, out.getvalue(), err.getvalue()


# --- fuzzed CSVs through load_rows and verify-data ------------------------------------------

# Both labels have lengths 9, 9, 8 in the same proportions, so the unmutated file passes verify-data.
BASE_ROWS = ["1,P11111,ACDEFGHIK,protA", "1,P11111,PPLPKKRW,protB", "1,Q22222,RSWSKPAAG,protC",
             "0,,MKTAYIAKQ,protD", "0,,GGSWWLLK,protE", "0,,QQNNRRTTV,protF", "0,,WYWYWYACD,protG",
             "0,,KLMNPQRS,protH", "0,,HHEEDDCCA,protI"]
HEADERS = ["", "label,target", "sequence,target,label", "label,target,sequence,source,extra",
           "Label , Target , Sequence", "label,label,target,sequence", "label;target;sequence", "seq,label"]
NOISE = [b",", b"\n", b"\r", b'"', b"\x00", b"\xff", b"\xc3\xa9", b" ", b"\t", b"1", b"A", b"x", b"\xef\xbb\xbf"]


def _fields(line, rng):
    cells = line.split(",")
    return cells, rng.randrange(len(cells))


def mutate(text: str, rng: random.Random) -> tuple[bytes, str]:
    """One seeded mutation of a CSV's text: (the bytes to write, the file's suffix)."""
    lines = text.split("\n")
    body = [i for i in range(1, len(lines)) if lines[i]] or [0]
    i = rng.choice(body)
    op = rng.randrange(24)
    if op == 0:                                          # add a field
        lines[i] += "," + rng.choice(["X", "", "1", "P11111"])
    elif op == 1:                                        # drop a field
        cells, k = _fields(lines[i], rng)
        lines[i] = ",".join(cells[:k] + cells[k + 1:])
    elif op == 2:                                        # swap two fields
        cells, k = _fields(lines[i], rng)
        j = rng.randrange(len(cells))
        cells[k], cells[j] = cells[j], cells[k]
        lines[i] = ",".join(cells)
    elif op == 3:                                        # a bad label
        cells, _ = _fields(lines[i], rng)
        cells[0] = rng.choice(["2", "-1", "", "1.0", "yes", " 1 ", "01", "\u0661", "True"])
        lines[i] = ",".join(cells)
    elif op == 4:                                        # a bad target: missing, or on a background row
        cells, _ = _fields(lines[i], rng)
        if len(cells) > 1:
            cells[1] = rng.choice(["", "P99999", "   ", '"A,B"', "P11111"])
        lines[i] = ",".join(cells)
    elif op == 5:                                        # bad letters in a sequence
        cells, _ = _fields(lines[i], rng)
        k = min(2, len(cells) - 1)
        pos = rng.randrange(len(cells[k]) + 1)
        cells[k] = cells[k][:pos] + rng.choice("1*- \u00e9xXBUZ\u03a9\t.") + cells[k][pos:]
        lines[i] = ",".join(cells)
    elif op == 6:                                        # a length out of range (or a single long peptide)
        cells, _ = _fields(lines[i], rng)
        cells[min(2, len(cells) - 1)] = "".join(rng.choice(mc.RESIDUES) for _ in range(
            rng.choice([0, 1, 2, 3, 21, 22, 23, 30, 60])))
        lines[i] = ",".join(cells)
    elif op == 7:                                        # another header
        lines[0] = rng.choice(HEADERS)
    elif op == 8:                                        # a duplicated row
        lines.insert(rng.randrange(1, len(lines) + 1), lines[i])
    elif op == 9:                                        # a field quoted, with a comma, newline or quote inside
        cells, k = _fields(lines[i], rng)
        cells[k] = '"' + cells[k] + rng.choice(["", ",", "\n", '""', "\r\n"]) + '"'
        lines[i] = ",".join(cells)
    elif op == 10:                                       # an unbalanced quote
        pos = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:pos] + '"' + lines[i][pos:]
    elif op == 11:                                       # a background row equal to an interacting one
        cells = lines[i].split(",")
        lines.append("0,," + (cells[2] if len(cells) > 2 else "ACDEFGHIK"))
    elif op == 12:                                       # a huge field
        lines[i] += "," + "A" * rng.choice([200, 140_000])
    text = "\n".join(lines)
    data = text.encode("utf-8", "surrogatepass")
    suffix = ".csv"
    if op == 13:                                         # CRLF or bare CR line ends
        data = data.replace(b"\n", rng.choice([b"\r\n", b"\r"]))
    elif op == 14:                                       # a BOM
        data = b"\xef\xbb\xbf" + data
    elif op == 15:                                       # UTF-16
        data = text.encode(rng.choice(["utf-16", "utf-16-le"]))
    elif op == 16:                                       # binary
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    elif op == 17:                                       # empty, blank or header only
        data = rng.choice([b"", b"\n", b"\n\n", b"label,target,sequence\n", b"   "])
    elif op == 18:                                       # flipped bits
        data = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        data = bytes(data)
    elif op == 19:                                       # inserted bytes
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data) + 1)
            data = data[:pos] + rng.choice(NOISE) + data[pos:]
    elif op == 20:                                       # deleted bytes
        pos = rng.randrange(len(data) + 1)
        data = data[:pos] + data[pos + rng.randint(1, 12):]
    elif op == 21:                                       # truncated
        data = data[:rng.randrange(len(data) + 1)]
    elif op == 22:                                       # gzip, intact, truncated or with flipped bytes
        data, suffix = bytearray(gzip.compress(data)), ".csv.gz"
        if rng.random() < 0.6:
            data[rng.randrange(10, len(data))] ^= 0xFF
        data = bytes(data[:rng.randrange(len(data) + 1)] if rng.random() < 0.3 else data)
    elif op == 23:                                       # NUL bytes
        data = data.replace(b"A", b"\x00", rng.randint(1, 3))
    return data, suffix


def mutate_sources(text: str, rng: random.Random) -> str:
    """Empty, blank, share or swap the `source` of some rows of a file with a source column."""
    lines = text.split("\n")
    body = [i for i in range(1, len(lines)) if lines[i].count(",") == 3]
    op, shared = rng.randrange(4), rng.choice(["protA", "protD", "one", "protein33"])   # protein33: held out at 5%
    for i in rng.sample(body, rng.randint(1, len(body))):
        cells = lines[i].split(",")
        if op == 1 and cells[0] != "1":                  # the file: only interacting rows lack a source
            continue
        cells[3] = {0: "", 1: "", 2: " ", 3: shared}[op]
        lines[i] = ",".join(cells)
    return "\n".join(lines)


def assert_split_trains_every_label(rows: mc.Rows, val_fraction: float) -> bool:
    """The split keeps rows of one source on one side and makes each row without a source a group of its
    own (as if its sequence named it); split_for_training refuses, naming the file and the label, exactly
    when a label of the file is left without training rows. Returns whether it refused."""
    train_idx, val_idx = mc.split_indices(rows, val_fraction)
    held = np.zeros(len(rows.sequences), dtype=bool)
    held[val_idx] = True
    sources = rows.sources if rows.sources is not None else [""] * len(held)
    for source in set(sources) - {""}:
        assert len({held[i] for i, s in enumerate(sources) if s == source}) == 1, source
    named = mc.Rows(rows.path, rows.labels, rows.targets, rows.sequences,
                    [s or seq for s, seq in zip(sources, rows.sequences)], rows.lines)
    assert np.array_equal(val_idx, mc.split_indices(named, val_fraction)[1])
    untrained = set(rows.labels.tolist()) - set(rows.labels[train_idx].tolist())
    try:
        mc.split_for_training(rows, val_fraction, quiet=True)
    except mc.DataError as e:
        refused = re.search(r"takes all \d+ label-(\d) rows and leaves none to train on", str(e))
        assert refused and str(e).startswith(rows.path) and int(refused[1]) in untrained, str(e)
        return True
    assert not untrained
    return False


def assert_meets_contract(rows: mc.Rows):
    n = len(rows.sequences)
    assert n > 0 and len(rows.labels) == len(rows.targets) == len(rows.lines) == n
    allowed, seen = set(mc.RESIDUES + mc.RARE_RESIDUES), set()
    for label, target, seq in zip(rows.labels.tolist(), rows.targets, rows.sequences):
        assert label in (0, 1) and (label == 1) == bool(target), (label, target)
        assert set(seq) <= allowed and mc.MIN_LEN <= len(seq) <= mc.MAX_LEN, seq
        assert (label, target, seq) not in seen
        seen.add((label, target, seq))
    by_label = [{s for l, s in zip(rows.labels, rows.sequences) if l == label} for label in (0, 1)]
    assert not by_label[0] & by_label[1]
    assert (np.diff(rows.lines) > 0).all()
    vocab = mc.Vocab.from_rows(rows)
    assert vocab.decode(vocab.encode(rows.sequences)) == rows.sequences


def test_fuzzed_csvs_load_valid_rows_or_fail_with_a_clear_error(tmp_path):
    """2,000 seeded mutations of a valid file: load_rows gives rows that meet the contract or a DataError
    naming the file; verify-data exits 0 or 1, never crashes, and passes only what load_rows accepts. Half the
    files with a source column have sources emptied or shared first; the split of the rows that load keeps
    every label in training or refuses clearly."""
    rng = random.Random(20240613)
    loaded, outcomes, refused = 0, {0: 0, 1: 0}, 0
    for case in range(2000):
        header = "label,target,sequence,source" if case % 3 else "label,target,sequence"
        base = BASE_ROWS if case % 3 else [r.rsplit(",", 1)[0] for r in BASE_ROWS]
        data, suffix = "\n".join([header] + base) + "\n", ".csv"
        source_rng = random.Random(f"sources {case}")    # its own stream: the mutations below stay as they were
        if case % 3 and source_rng.random() < 0.5:
            data = mutate_sources(data, source_rng)
        for _ in range(rng.choice([1, 1, 2, 3])):
            data, suffix = mutate(data if isinstance(data, str) else data.decode("utf-8", "replace"), rng)
        path = tmp_path / f"case{case}{suffix}"
        path.write_bytes(data)
        try:
            rows = mc.load_rows(path)
        except mc.DataError as e:
            rows = None
            assert str(path) in str(e), (case, str(e))
        else:
            assert_meets_contract(rows)
            refused += assert_split_trains_every_label(rows, source_rng.choice([0.05, 0.3, 0.7]))
            loaded += 1
        code, out, err = run_main("verify-data", path)
        assert code in (0, 1), (case, code, out, err)
        assert "Traceback" not in out + err and str(path) in out, (case, out, err)
        assert rows is not None or code == 1, (case, out)
        outcomes[code] += 1
        path.unlink()
    print(f"\n2000 mutated files: {loaded} loaded ({refused} of them refused by the split); verify-data exit 0: "
          f"{outcomes[0]}, exit 1: {outcomes[1]}")
    assert loaded > 50 and outcomes[0] > 0        # the fuzz also reaches files that hold
    assert 0 < refused < loaded                     # and splits that train every label, and splits that cannot


def test_verify_data_reports_a_single_long_peptide_instead_of_crashing(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("label,target,sequence\n1,P11111,ACDEFGHIK\n0,,KLMNPQRSTV\n0,," + "W" * 23 + "\n")
    code, out, err = run_main("verify-data", path)
    assert code == 1 and "line 4: length 23 outside 4-20" in out and err == ""
    assert "    23         1" in out                 # the length table counts it
    with pytest.raises(mc.DataError, match="line 4: length 23 outside 4-20"):
        mc.load_rows(path)


def test_verify_data_on_files_it_cannot_read(tmp_path):
    assert run_main("verify-data", tmp_path / "missing.csv")[0] == 2
    code, _, err = run_main("verify-data", tmp_path)
    assert code == 2 and err.startswith("error:") and "not a file" in err
    header_only = tmp_path / "header.csv"
    header_only.write_text("label,target,sequence\n")
    code, out, _ = run_main("verify-data", header_only)
    assert code == 1 and "no data rows" in out


# --- Ctrl-C and kills at random moments of a real `train` process ---------------------------

# A `train` process with slow steps: two pauses inside each step, one after its first random draw and
# one after the optimizer update (before the step counter moves), and a SIGINT the process sends itself
# at a chosen point of a chosen step. Test code only: mimir_core runs unmodified underneath.
FAULTY_TRAIN = '''
import os, signal, sys, time
# Ctrl-C as an interactive shell delivers it: a process started in the background from a script inherits
# SIGINT ignored, and train rightly leaves an ignored SIGINT alone (the signals below would do nothing).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {root!r})
import mimir_core as mc

marker = os.environ["FAULT_MARKER"]
where, _, at = os.environ.get("FAULT_SIGINT", "").partition(":")
train_step, drop_condition = mc.Trainer.train_step, mc.drop_condition
current = [0]


def interrupt_if(point):
    if point == where and current[0] == int(at):
        os.kill(os.getpid(), signal.SIGINT)


def slow_drop_condition(*args):
    out = drop_condition(*args)            # the step has drawn from the RNG
    interrupt_if("forward")
    time.sleep(0.01)
    return out


def slow_train_step(self, *args):
    current[0] = self.step + 1
    with open(marker, "w") as f:
        f.write(str(current[0]))
    out = train_step(self, *args)          # the update is applied; self.step has not moved yet
    interrupt_if("update")
    time.sleep(0.01)
    return out


mc.drop_condition, mc.Trainer.train_step = slow_drop_condition, slow_train_step
mc.main(sys.argv[1:])
'''


def test_sigint_and_sigkill_mid_step_then_resume_give_the_uninterrupted_weights(tmp_path):
    data = write_fixture(tmp_path / "data.csv")
    defaults = dict(epochs=2, label1_repeat=mc.Config.label1_repeat)          # as the command line trains
    straight = mc.train(tiny(data, **defaults), tmp_path / "straight", progress=False)   # 166 steps
    script, marker, run = tmp_path / "faulty_train.py", tmp_path / "marker", tmp_path / "run"
    script.write_text(FAULTY_TRAIN.format(root=str(ROOT)))
    argv = [sys.executable, str(script), "train", "--preset", "tiny", "--data", str(data), "--epochs", "2",
            "--run-name", "run", "--checkpoint-dir", str(tmp_path), "--no-progress", "--resume"]
    saved_step = lambda: mc.load_checkpoint(run / "last.pt")["step"]

    def launch(sigint_at=""):
        marker.unlink(missing_ok=True)
        env = {**os.environ, "FAULT_MARKER": str(marker), "FAULT_SIGINT": sigint_at}
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(proc, expected_codes):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in expected_codes and "Traceback" not in err, (proc.returncode, err)
        if proc.returncode == 130:
            assert f"interrupted: saved {run}/last.pt at step {saved_step()}" in err
        return err

    # Ctrl-C right after an optimizer update, and inside a forward pass after its first random draw:
    # each step still completes, and the checkpoint holds it whole.
    finish(launch("update:10"), {130})
    assert saved_step() == 10
    finish(launch("forward:14"), {130})
    assert saved_step() == 14

    # Ctrl-C and kill -9 at random moments (seeded), mostly mid-step: two thirds of a step is its pauses.
    rng = random.Random(7)
    for sig in rng.sample([signal.SIGINT, signal.SIGKILL, signal.SIGKILL], 3):
        proc = launch()
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(sig)
        finish(proc, {0, 130 if sig == signal.SIGINT else -signal.SIGKILL})
    finish(launch(), {0})

    a = mc.load_checkpoint(tmp_path / "straight" / "last.pt")
    b = mc.load_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == straight["step"] > 100
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert ((tmp_path / "straight" / "history_steps.csv").read_text()
            == (run / "history_steps.csv").read_text())


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test, whatever this process inherited (pytest started in the
    background from a script gets SIGINT ignored); the inherited handler comes back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_ctrl_c_stops_at_once_without_saving(fixture_csv, tmp_path, monkeypatch, python_ctrl_c):
    """The first Ctrl-C waits for the step to end; a second one during that step stops it where it is,
    and the half-done step is not saved."""
    trainer = mc.Trainer(tiny(fixture_csv, epochs=2), tmp_path / "run")
    original = mc.drop_condition

    def two_interrupts(*args):
        if trainer.step + 1 == 40:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args)
    monkeypatch.setattr(mc, "drop_condition", two_interrupts)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # Ctrl-C is Python's again
    assert trainer.step == 39 and mc.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 36


# --- non-finite gradients and fp16 overflow -------------------------------------------------


def infinite_gradient_at(trainer, steps):
    """A hook that puts an inf into one gradient entry on the given steps (the loss stays finite)."""
    def hook(grad):
        first = torch.tensor([0], device=grad.device)
        return grad.index_fill(0, first, float("inf")) if trainer.step + 1 in steps else grad
    trainer.model.head.bias.register_hook(hook)


def test_a_finite_loss_with_an_infinite_gradient_stops_and_never_reaches_last_pt(fixture_csv, tmp_path):
    trainer = mc.Trainer(tiny(fixture_csv, epochs=3), tmp_path / "run")
    infinite_gradient_at(trainer, {72})               # the last step of epoch 2, right before its checkpoint
    with pytest.raises(mc.NonFiniteLoss, match=r"gradient was not finite at step 72 .*last good state \(step 36\)"):
        trainer.run(progress=False)
    ckpt = mc.load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 36 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())      # the update was skipped


def test_a_non_finite_loss_before_any_checkpoint_says_none_was_saved(fixture_csv, tmp_path):
    trainer = mc.Trainer(tiny(fixture_csv, epochs=1), tmp_path / "run")
    infinite_gradient_at(trainer, {3})
    with pytest.raises(mc.NonFiniteLoss, match=r"at step 3 .*no checkpoint was saved yet"):
        trainer.run(progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_fp16_overflow_steps_are_skipped_and_counted_and_stop_the_run_only_when_they_persist(
        fixture_csv, tmp_path, monkeypatch, capsys):
    """The gradient scaler runs on CUDA only; its tolerance is what fp16 switches on, so the CPU exercises
    the same skipping and counting."""
    trainer = mc.Trainer(tiny(fixture_csv, max_steps=40), tmp_path / "a")
    trainer.steps.skip_tolerance = mc.MAX_FP16_SKIPS_IN_A_ROW
    infinite_gradient_at(trainer, {5, 6, 20})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    summary = trainer.run(progress=False)
    assert summary["step"] == 40 and summary["skipped_steps"] == 3 and trainer.steps.skipped_steps == [5, 6, 20]
    assert "steps 5, 6, 20: fp16 gradient overflow, update skipped" in capsys.readouterr().err
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(trainer.model.parameters(), before))

    limit = mc.MAX_FP16_SKIPS_IN_A_ROW
    persistent = mc.Trainer(tiny(fixture_csv, max_steps=40), tmp_path / "c")
    persistent.steps.skip_tolerance = limit
    infinite_gradient_at(persistent, set(range(8, 41)))
    with pytest.raises(mc.NonFiniteLoss, match=rf"at step {8 + limit}.*steps 8-{8 + limit} were all skipped"):
        persistent.run(progress=False)


# --- refused and corrupt checkpoints --------------------------------------------------------


def test_refused_and_corrupt_checkpoints_say_what_the_file_is_and_run_no_code(fixture_csv, tmp_path):
    run = tmp_path / "run"
    mc.train(tiny(fixture_csv, max_steps=5), run, progress=False)
    ran = tmp_path / "code_ran"

    class Payload:                                     # unpickling it would create the file `ran`
        def __reduce__(self):
            return (exec, (f"open({str(ran)!r}, 'w').close()",))

    cases = {"pickled code": lambda p: torch.save({"format": mc.CHECKPOINT_FORMAT, "x": Payload()}, p),
             "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
             "empty": lambda p: p.write_bytes(b""),
             "truncated": lambda p: p.write_bytes((run / "last.pt").read_bytes()[:5000])}
    for name, write in cases.items():
        for checkpoint in ("best.pt", "last.pt"):
            write(run / checkpoint)
        code, out, err = run_main("generate", "--run-name", "run", "--checkpoint-dir", tmp_path, "-n", 3)
        assert code == 2 and out == "" and err.startswith("error: ") and "Traceback" not in err, (name, err)
        assert re.search(r"(best|last)\.pt: not a readable Mimir checkpoint", err), (name, err)
        assert "torch.load" not in err and "weights_only" not in err, (name, err)
        with pytest.raises(mc.DataError, match="not a readable Mimir checkpoint"):
            mc.load_checkpoint(run / "last.pt")
        if name == "pickled code":
            assert "(exec)" in err and "refused to run code" in err and "written by Mimir" in err
        else:
            assert "nothing was loaded or run" in err and "intact copy" in err
    assert not ran.exists()


# --- settings out of range ------------------------------------------------------------------


@pytest.mark.parametrize("setting, value, says", [
    ("cond_drop", 0.6, "in [0, 0.5)"), ("cond_drop", -0.1, "in [0, 0.5)"), ("dim", 0, ">= 2"),
    ("dim", 33, "even"), ("n_heads", 0, ">= 1"), ("n_layers", -1, ">= 1"), ("n_steps", 0, ">= 1"),
    ("epochs", 0, ">= 1"), ("max_steps", -5, ">= 0"), ("batch_size", 0, ">= 1"), ("lr", 0, "> 0"),
    ("lr", -1e-3, "> 0"), ("lr", float("nan"), "finite"), ("lr", float("inf"), "finite"),
    ("warmup", -1, ">= 0"), ("val_fraction", 1.0, "in [0, 1)"), ("dropout", 1.0, "in [0, 1)"),
    ("hybrid_coeff", -0.1, ">= 0"), ("grad_clip", 0, "> 0"), ("weight_decay", -1, ">= 0"),
    ("seed", -1, "in [0, 2**32)"), ("log_every", 0, ">= 1"), ("save_every_minutes", -1, ">= 0"),
    ("max_val_rows", 0, ">= 1"), ("device", "gpu", "one of auto, cpu, cuda"), ("epochs", 2.5, "whole number"),
    ("lr", "fast", "a number"), ("compile", "False", "True or False"),
])
def test_settings_out_of_range_are_refused_with_their_name_and_range(setting, value, says):
    with pytest.raises(mc.DataError, match=rf"setting {setting} = .*{re.escape(says)}"):
        mc.make_config("tiny", **{setting: value})


def test_settings_in_range_pass_and_keep_their_type():
    cfg = mc.make_config("tiny", epochs=3.0, lr="1e-3", cond_drop=0.0, val_fraction=0, max_steps=0)
    assert (cfg.epochs, cfg.lr, cfg.cond_drop) == (3, 1e-3, 0.0) and isinstance(cfg.epochs, int)
    for preset in mc.PRESETS:
        mc.make_config(preset)


def test_the_command_line_refuses_a_bad_setting_before_training(fixture_csv, tmp_path):
    code, _, err = run_main("train", "--preset", "tiny", "--data", fixture_csv, "--checkpoint-dir", tmp_path,
                            "--cond-drop", "0.6", "--no-progress")
    assert code == 2 and "error: setting cond_drop = 0.6 is out of range" in err and "Traceback" not in err
    assert not (tmp_path / "tiny").exists()


# --- a disk that refuses ----------------------------------------------------------------------


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(fixture_csv, tmp_path, monkeypatch):
    run = tmp_path / "run"
    saves, real_save = [], torch.save

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        saves.append(f.name)
        if len(saves) >= 3:                            # last.pt and best.pt of epoch 1 fit; epoch 2 does not
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    code, _, err = run_main("train", "--preset", "tiny", "--data", fixture_csv, "--run-name", "run",
                            "--checkpoint-dir", tmp_path, "--epochs", 2, "--label1-repeat", 1, "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert f"error: cannot write {run}/last.pt: No space left on device; last.pt keeps its previous content" in err
    assert f"stopped at step 72; {run}/last.pt keeps the last good state (step 36)" in err
    assert "then resume the run" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert mc.load_checkpoint(run / "last.pt")["step"] == 36
    assert not list(run.glob("*.tmp"))
    code, _, err = run_main("train", "--run-name", "run", "--checkpoint-dir", tmp_path, "--data", fixture_csv,
                            "--epochs", 2, "--no-progress", "--resume")
    assert code == 0 and mc.load_checkpoint(run / "last.pt")["step"] == 72


def test_an_unwritable_checkpoint_directory_is_a_clear_error(fixture_csv, tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    code, _, err = run_main("train", "--preset", "tiny", "--data", fixture_csv, "--checkpoint-dir", not_a_dir,
                            "--max-steps", 2, "--no-progress")
    assert code == 2 and err.splitlines()[-1].startswith("error: ") and str(not_a_dir) in err
    assert "Traceback" not in err

    path = tmp_path / "x.pt"
    mc.atomic_write(path, lambda f: f.write(b"old"))

    def read_only(*args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(mc.DiskError, match=r"cannot write .*x.pt: Permission denied; x.pt keeps its previous"):
        mc.atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"old" and not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_from_another_version_names_the_settings_it_does_not_know(fixture_csv, tmp_path):
    run = tmp_path / "run"
    mc.train(tiny(fixture_csv, max_steps=3), run, progress=False)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["retrieval"] = 8
    torch.save(ckpt, run / "best.pt")
    code, out, err = run_main("generate", "--run-name", "run", "--checkpoint-dir", tmp_path, "-n", 2)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"{run}/best.pt: the run was saved with settings this version of Mimir does not know: retrieval" in err
