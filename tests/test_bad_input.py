"""Bad input at the edges: empty sources in the split, out-of-range numbers on the command line, runaway
requests, and a run name that names no run."""
import contextlib
import io
import itertools
import re
import subprocess
import sys
import time
import tracemalloc
import zlib

import pytest

import mimir_core as mc
import mimir_eval as ev
from conftest import write_fixture
from test_faults import run_main as run_core


def run_main(command, *argv):
    """A command of mimir_core, or the evaluation (mimir_eval.py), in this process: (exit code, stdout, stderr)."""
    return run_core(*argv, main=ev.main) if command == "evaluate" else run_core(command, *argv)


def held_out_names(count: int, val_fraction: float = 0.05) -> list:
    """Source names whose hash puts their group in the held-out split (see split_indices)."""
    names = (f"protein{i}" for i in itertools.count())
    return list(itertools.islice((s for s in names if zlib.crc32(s.encode()) / 2**32 < val_fraction), count))


def rewrite_sources(path, source_of):
    """Set each data row's source to source_of(label, target, sequence, old source)."""
    lines = path.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    path.write_text("\n".join(lines[:1] + [",".join(row[:3] + [source_of(*row)]) for row in rows]) + "\n")
    return path


def tiny(data, **kw):
    return mc.make_config("tiny", data=str(data), **kw)


# --- the source column and the held-out split ------------------------------------------------


def test_label_1_rows_with_an_empty_source_reach_training(tmp_path):
    """Background windows name their protein, interacting peptides leave the source empty: each of those
    rows is a group of its own, so the split spreads them over both sides instead of holding all out."""
    data = rewrite_sources(write_fixture(tmp_path / "data.csv"), lambda l, t, s, src: "" if l == "1" else src)
    rows = mc.load_rows(data)
    train_idx, val_idx = mc.split_indices(rows, 0.05)
    n1 = int((rows.labels == 1).sum())
    assert n1 == 450 and (rows.labels[train_idx] == 1).sum() > 0.85 * n1
    assert (rows.labels[val_idx] == 1).sum() > 0                       # still held out too, row by row
    trainer = mc.Trainer(tiny(data), tmp_path / "run")
    trained = trainer.train_data
    assert (trained.label == 1).sum() > 0.85 * n1
    assert set(trained.target_id[trained.label == 1].tolist()) == {1, 2, 3}   # every target trains


def test_a_label_whose_rows_all_fall_in_the_held_out_split_is_refused_by_name(tmp_path):
    one_source = held_out_names(1)[0]
    data = rewrite_sources(write_fixture(tmp_path / "data.csv"), lambda l, t, s, src: one_source if l == "0" else src)
    with pytest.raises(mc.DataError, match=rf"{re.escape(str(data))}: the held-out split .* takes all 2000 label-0 "
                                           rf"rows and leaves none to train on; they come from source\(s\) {one_source}"):
        mc.Trainer(tiny(data), tmp_path / "run")
    code, _, err = run_main("train", "--preset", "tiny", "--data", data, "--run-name", "r", "--checkpoint-dir",
                            tmp_path, "--no-progress")
    assert code == 2 and "label-0 rows and leaves none to train on" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_targets_left_without_training_rows_are_named_in_a_warning(tmp_path, capsys):
    """O33333's peptides all come from one protein that the split holds out: the model never sees the target."""
    lost = held_out_names(1)[0]
    data = rewrite_sources(write_fixture(tmp_path / "data.csv"), lambda l, t, s, src: lost if t == "O33333" else src)
    mc.Trainer(tiny(data), tmp_path / "run")
    err = capsys.readouterr().err
    assert "warning: 1 target(s) have no training rows" in err and "cannot learn them" in err
    assert err.rstrip().endswith("come from an untrained target: O33333")
    assert "P11111" not in err and "Q22222" not in err


def test_the_warning_names_ten_targets_and_counts_the_rest(tmp_path, capsys):
    lost = held_out_names(12)
    lines = ["label,target,sequence,source"] + [f"0,,{'ACDEFGHIKL'[i:] + 'W' * 4},bg{i}" for i in range(8)]
    lines += [f"1,T{k:02d},{'KLMNPQRST'[:5 + k % 4]}{'ACDEFGHIKLMNPQRSTVWY'[k]},{src}" for k, src in enumerate(lost)]
    lines.append("1,T99,PPLPPPLP,kept")                      # a source the split keeps in training
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    rows = mc.load_rows(tmp_path / "d.csv")
    train_idx, _ = mc.split_for_training(rows, 0.05)
    assert "T99" in {rows.targets[i] for i in train_idx}
    err = capsys.readouterr().err
    assert "12 target(s) have no training rows" in err
    assert err.rstrip().endswith("T00, T01, T02, T03, T04, T05, T06, T07, T08, T09 and 2 more")


# --- a run name that names no run ------------------------------------------------------------


@pytest.mark.parametrize("command", [["generate", "-n", "3"], ["score"], ["evaluate", "-n", "10"]])
def test_a_missing_run_is_named_with_the_runs_that_are_there(command, tmp_path):
    for run, file in (("alpha", "best.pt"), ("beta", "last.pt"), ("gamma", "model.pt")):
        (tmp_path / run).mkdir()
        (tmp_path / run / file).write_bytes(b"")
    (tmp_path / "not_a_run").mkdir()                                # no checkpoint: not listed
    (tmp_path / "not_a_run" / "config.json").write_text("{}")
    code, out, err = run_main(*command, "--run-name", "nosuch", "--checkpoint-dir", tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip() == f"error: there is no run named 'nosuch' in {tmp_path}; the runs there: alpha, beta, gamma"
    code, _, err = run_main(*command, "--run-name", "not_a_run", "--checkpoint-dir", tmp_path)
    assert code == 2 and f"{tmp_path / 'not_a_run'} holds no checkpoint yet (best.pt, last.pt, model.pt)" in err


def test_a_missing_checkpoint_folder_says_so(tmp_path):
    code, _, err = run_main("generate", "--run-name", "nosuch", "--checkpoint-dir", tmp_path / "elsewhere")
    assert code == 2 and err.strip() == (f"error: there is no run named 'nosuch' in {tmp_path / 'elsewhere'}; "
                                         f"{tmp_path / 'elsewhere'} does not exist")
    code, _, err = run_main("generate", "--run-name", "nosuch", "--checkpoint-dir", tmp_path)
    assert code == 2 and err.strip().endswith(f"; {tmp_path} holds no runs")


# --- numbers on the command line ---------------------------------------------------------------

HUGE = "99999999999999999999"
RANGES = {      # option: (commands that take it, the range its error states)
    "-n": {"generate": "a whole number from 1 to 10,000,000", "evaluate": "a whole number from 1 to 100,000"},
    "--min-length": {"generate": "a whole number from 4 to 20"},
    "--max-length": {"generate": "a whole number from 4 to 20"},
    "--guidance": {"generate": "a number from -1 to 20", "evaluate": "a number from -1 to 20"},
    "--seed": {c: "a whole number from 0 to 4,294,967,295" for c in ("generate", "score", "evaluate")},
    "--strength": {"generate": "a number from 0 to 1"},
    "--draws": {"score": "a whole number from 1 to 1,000"},
    "--noise-draws": {"evaluate": "a whole number from 1 to 1,000"},
    "--vocab-size": {"presets": "a whole number from 21 to 27"},
    "--num-targets": {"presets": "a whole number from 0 to 100,000"},
}
# Each option with a negative, zero (where zero is out of range), NaN, infinite and huge value.
BAD_VALUES = {"-n": ["-5", "0", "nan", HUGE, "2.5"], "--min-length": ["-1", "0", "nan", HUGE],
              "--max-length": ["-3", "0", "nan", "21"], "--guidance": ["-5", "nan", "inf", "-inf", "1e9"],
              "--seed": ["-5", "nan", str(2**32), HUGE], "--strength": ["-0.1", "nan", "inf", "1.5"],
              "--draws": ["-1", "0", "nan", "999999999"], "--noise-draws": ["-1", "0", "nan", "999999999"],
              "--vocab-size": ["-1", "0", "nan", HUGE], "--num-targets": ["-1", "nan", HUGE]}
CASES = [(command, option, value, allowed) for option, commands in RANGES.items()
         for command, allowed in commands.items() for value in BAD_VALUES[option]]


@pytest.mark.parametrize("command, option, value, allowed", CASES)
def test_numbers_out_of_range_are_refused_with_the_option_and_its_range(command, option, value, allowed,
                                                                         trained_run):
    where = ["--run-name", trained_run.name, "--checkpoint-dir", trained_run.parent] if command != "presets" else []
    given = [f"{option}={value}"] if value == "-inf" else [option, value]   # argparse reads a bare -inf as an option
    code, out, err = run_main(command, *where, *given)
    assert code == 2 and out == "" and "Traceback" not in err
    assert re.search(rf"error: argument {option}: '?{re.escape(value)}'? is (out of range|not a finite number|not a "
                     rf"whole number written in digits|not a number): it must be {re.escape(allowed)}", err), err


@pytest.mark.parametrize("command, value", [("generate", "-1"), ("generate", "2"), ("generate", "nan"),
                                            ("score", "0"), ("score", "-1"), ("score", "nan"), ("score", HUGE)])
def test_a_label_out_of_range_is_refused_with_its_choices(command, value, trained_run):
    code, out, err = run_main(command, "--run-name", trained_run.name, "--checkpoint-dir", trained_run.parent,
                              "--label", value)
    assert code == 2 and out == "" and "Traceback" not in err and "error: argument --label: invalid" in err


def test_the_ends_of_each_range_are_accepted():
    parser = mc.build_parser()
    args = parser.parse_args(["generate", "--run-name", "r", "-n", "10000000", "--min-length", "4", "--max-length",
                              "20", "--guidance", "-1", "--seed", "0", "--strength", "0"])
    assert (args.n, args.min_length, args.max_length, args.guidance, args.seed, args.strength) == (
        10_000_000, 4, 20, -1.0, 0, 0.0)
    args = parser.parse_args(["generate", "--run-name", "r", "-n", "1", "--guidance", "20", "--seed",
                              str(2**32 - 1), "--strength", "1"])
    assert (args.n, args.guidance, args.seed, args.strength) == (1, 20.0, 2**32 - 1, 1.0)
    args = parser.parse_args(["score", "--run-name", "r", "--draws", "1000", "--seed", "7", "--label", "1"])
    assert (args.draws, args.seed, args.label) == (1000, 7, 1)
    args = ev.build_parser().parse_args(["--run-name", "r", "-n", "100000", "--noise-draws", "1",
                                         "--guidance", "0", "0.5", "2"])
    assert (args.n, args.noise_draws, args.guidance) == (100_000, 1, [0.0, 0.5, 2.0])
    args = parser.parse_args(["presets", "--vocab-size", "21", "--num-targets", "0"])
    assert (args.vocab_size, args.num_targets) == (21, 0)


# --- runaway requests: generate writes as it makes, in flat memory ---------------------------


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """The smallest model that samples: one diffusion step, one narrow layer (200,000 peptides in seconds)."""
    tmp = tmp_path_factory.mktemp("fast")
    cfg = tiny(write_fixture(tmp / "data.csv"), n_steps=1, dim=8, n_heads=1, n_layers=1, max_steps=2, warmup=0)
    mc.train(cfg, tmp / "run", progress=False)
    return tmp / "run"


class LineCounter(io.TextIOBase):
    """A stdout that keeps nothing: it counts lines, and notes how many batches were made at its first write."""

    def __init__(self, batches_made):
        self.lines, self.batches_made, self.first_write_after = 0, batches_made, None

    def write(self, text):
        if self.first_write_after is None:
            self.first_write_after = self.batches_made[0]
        self.lines += text.count("\n")
        return len(text)


def test_generate_writes_each_batch_as_it_is_made_in_flat_memory(fast_run, monkeypatch):
    """200,000 peptides: the first lines are out after the first batch, and the Python heap (numpy arrays
    included) holds a batch or so at a time: holding all of them took 29 MB."""
    made, sample_tokens = [0], mc.sample_tokens

    def counting_sample_tokens(*args, **kwargs):
        made[0] += 1
        return sample_tokens(*args, **kwargs)
    monkeypatch.setattr(mc, "sample_tokens", counting_sample_tokens)
    out, err = LineCounter(made), io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mc.main(["generate", "--run-name", fast_run.name, "--checkpoint-dir", str(fast_run.parent),
                     "-n", "200000", "--device", "cpu"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.lines == 200_000 and made[0] == 196             # 195 batches of 1024 and one of 320
    assert peak < 4e6, f"peak Python heap {peak / 1e6:.1f} MB"
    assert out.first_write_after == 1
    assert "200000/200000" in err.getvalue()                   # the progress bar, on stderr
    print(f"\n200,000 peptides: peak Python heap {peak / 1e6:.2f} MB")


def test_generate_prints_its_first_peptides_long_before_the_last(fast_run):
    """Through a pipe, as `generate ... | head` reads it: lines arrive while the rest are still being made."""
    argv = [sys.executable, str(mc.REPO_DIR / "mimir_core.py"), "generate", "--run-name", fast_run.name,
            "--checkpoint-dir", str(fast_run.parent), "-n", "200000", "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    first_at = time.perf_counter() - start
    rest = proc.stdout.read()
    _, err = proc.communicate(timeout=120)
    total = time.perf_counter() - start
    assert proc.returncode == 0 and "Traceback" not in err and len(rest.split()) == 199_999
    assert first.strip().isalpha() and total - first_at > first_at, (first_at, total)    # made after the first line
    print(f"\nfirst line after {first_at:.1f} s, all 200,000 after {total:.1f} s")


def test_generate_stops_quietly_when_its_reader_does(fast_run):
    """`generate -n 200000 | head -1`: the reader closes the pipe, generate stops making peptides."""
    argv = [sys.executable, str(mc.REPO_DIR / "mimir_core.py"), "generate", "--run-name", fast_run.name,
            "--checkpoint-dir", str(fast_run.parent), "-n", "200000", "--device", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip().isalpha()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "rror" not in err and "Exception" not in err, err
    assert "200000/200000" not in err                           # it stopped: the bar never reached the end


def test_score_stops_quietly_when_its_reader_does(fast_run, tmp_path):
    """`score --input FILE | head -1` with 20,000 peptides (5 batches): the reader closes the pipe during the
    first batch's rows, score stops there without an error."""
    letters = mc.load_run(fast_run).vocab.letters
    path = tmp_path / "many.txt"
    path.write_text("".join("".join(p) + "\n" for p in itertools.islice(itertools.product(letters, repeat=6), 20_000)))
    argv = [sys.executable, str(mc.REPO_DIR / "mimir_core.py"), "score", "--run-name", fast_run.name,
            "--checkpoint-dir", str(fast_run.parent), "--input", str(path), "--device", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "\t".join(mc.SCORE_COLUMNS) + "\n"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "rror" not in err and "Exception" not in err, err
    assert "20000/20000" not in err                             # it stopped: the bar never reached the end
