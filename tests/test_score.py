"""Scoring a user's peptides, variants of a known peptide, templates: the functions, the report, the CLI."""
import contextlib
import io
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import mimir_core as mc
import mimir_eval as ev
from conftest import FIXTURE_MOTIFS, write_fixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(trained_run):
    return mc.load_run(trained_run)


@pytest.fixture(scope="module")
def fixture_peptides(trained_run):
    rows = mc.load_rows(mc.load_run(trained_run).cfg.data)
    return rows.sequences[:40] + rows.sequences[-40:]         # label-1 rows of the first target, then background


@pytest.fixture(scope="module")
def motif_run(tmp_path_factory):
    """A model that has learned where a motif sits, not only which letters it has: one target whose 500
    peptides carry RSWSKP, 1,000 background peptides, a wider tiny model and batch 32 (about 280 steps).
    The shared tiny run learns the composition of the fixture targets, not yet their order."""
    tmp = tmp_path_factory.mktemp("motif")
    path = write_fixture(tmp / "data.csv", n_background=1000, n_per_target=500)
    path.write_text("".join(ln for ln in path.read_text().splitlines(keepends=True)
                            if not ln.startswith(("1,P11111", "1,O33333"))))
    cfg = mc.make_config("tiny", data=str(path), epochs=8, dim=64, n_heads=4, batch_size=32)
    mc.train(cfg, tmp / "run", progress=False)
    return mc.load_run(tmp / "run")


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, str(ROOT / "mimir_core.py"), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=600)


# --- score -----------------------------------------------------------------------------------


def test_scores_are_deterministic_per_seed_and_do_not_depend_on_order_or_batch(run, fixture_peptides):
    peptides = fixture_peptides
    first = mc.score(run, peptides, "P11111", seed=0)
    assert [r["peptide"] for r in first] == peptides
    assert mc.score(run, peptides, "P11111", seed=0) == first
    scores = np.array([r["score"] for r in first])
    mix = mc.run_score_mix(run)
    for r in first:
        assert r["score"] == pytest.approx(mix * (r["background_bits"] - r["condition_bits"])
                                           + (1 - mix) * (r["any_target_bits"] - r["condition_bits"]))
        assert r["condition_bits"] > 0 and r["background_bits"] > 0 and r["length"] == len(r["peptide"])
    reversed_scores = [r["score"] for r in mc.score(run, peptides[::-1], "P11111", seed=0, batch_size=7)][::-1]
    assert np.allclose(reversed_scores, scores, atol=1e-3)
    alone = mc.score(run, peptides[50:53] + [peptides[3].lower()], "P11111", seed=0)     # other batch-mates
    assert np.allclose([r["score"] for r in alone], scores[[50, 51, 52, 3]], atol=1e-3)
    other_seed = np.array([r["score"] for r in mc.score(run, peptides, "P11111", seed=1)])
    assert not np.allclose(other_seed, scores, atol=1e-3)
    assert np.corrcoef(other_seed, scores)[0, 1] > 0.5          # another draw of the noise, the same signal


def test_a_peptides_noise_depends_on_the_seed_the_draw_and_the_peptide_only(run, fixture_peptides):
    peptides = fixture_peptides[:10]
    x0 = torch.from_numpy(run.vocab.encode(peptides))
    noise = mc.peptide_noise(x0, 0, 0, 10, 20)
    assert noise.shape == (10, 10, mc.MAX_LEN, 20) and 0 <= noise.min() and noise.max() < 1
    assert torch.equal(mc.peptide_noise(x0[[3, 0]], 0, 0, 10, 20), noise[[3, 0]])             # any row
    width = max(map(len, peptides))
    assert torch.equal(mc.peptide_noise(x0[:, :width], 0, 0, 10, 20), noise[:, :, :width])   # any width
    assert not torch.equal(mc.peptide_noise(x0, 0, 1, 10, 20), noise)                         # another draw
    assert not torch.equal(mc.peptide_noise(x0, 1, 0, 10, 20), noise)                         # another seed


def test_both_conditions_see_the_same_noise_so_the_score_is_steadier_than_either_bound(run, fixture_peptides):
    """Across seeds, a peptide's score moves far less than its bound under the condition (the noise is
    common to both terms and cancels), and more draws move it less."""
    peptides = fixture_peptides[::4]
    spread = {}
    for draws in (1, 4):
        results = [mc.score(run, peptides, "P11111", seed=seed, draws=draws) for seed in range(4)]
        for key in ("score", "condition_bits"):
            spread[key, draws] = np.array([[r[key] for r in rs] for rs in results]).std(0).mean()
    assert spread["score", 1] < 0.5 * spread["condition_bits", 1], spread
    assert spread["score", 4] < 0.75 * spread["score", 1], spread


def test_score_ranks_motif_bearing_peptides_above_shuffled_ones(motif_run):
    """The same letters, in motif order or shuffled: composition cannot tell them apart (AUROC 0.5 by
    construction), the score must."""
    rng = random.Random(0)
    rows = mc.load_rows(motif_run.cfg.data)
    with_motif, shuffled = [], []
    for seq in [s for s, t in zip(rows.sequences, rows.targets) if t == "Q22222"][:100]:
        rest = list(seq.replace("RSWSKP", "", 1))
        rng.shuffle(rest)
        cut = rng.randint(0, len(rest))
        with_motif.append("".join(rest[:cut]) + "RSWSKP" + "".join(rest[cut:]))   # a new peptide with the motif
        shuffled.append("".join(rng.sample(seq, len(seq))))
    scores = [r["score"] for r in mc.score(motif_run, with_motif + shuffled, "Q22222")]
    model = ev.auroc_wins(scores[:100], scores[100:]).mean()
    log_odds = ev.composition_log_odds(["RSWSKP"], ["ACDEFGHIKLMNPQRSTVWY"], motif_run.vocab.letters)
    comp = [round(sum(log_odds[c] for c in p), 9) for p in with_motif + shuffled]     # float sums in any order
    assert ev.auroc_wins(comp[:100], comp[100:]).mean() == 0.5
    assert model > 0.75, model


def test_score_rejects_bad_peptides_and_conditions_by_name(run):
    with pytest.raises(mc.DataError, match=r"peptide 2 'AC1DE': '1' at position 3 is not a residue letter"):
        mc.score(run, ["ACDEFG", "AC1DE", "ACDEFGHIK"], "P11111")
    with pytest.raises(mc.DataError, match=r"peptide 1 'ACD': length 3 outside 4-20"):
        mc.score(run, ["ACD"], "P11111")
    with pytest.raises(mc.DataError, match=r"'X' at position 2 is not among this model's residue letters"):
        mc.score(run, ["AXDEF"], "P11111")
    with pytest.raises(mc.DataError, match="close matches: P11111"):
        mc.score(run, ["ACDEF"], "P1111")
    with pytest.raises(mc.DataError, match="label is 1"):
        mc.score(run, ["ACDEF"], None, label=0)


def test_read_peptides_takes_lines_fasta_and_csv_with_their_line_numbers(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("acdef\n\n  KLMNP \nAC1\n")
    assert mc.read_peptides(plain) == (str(plain), [(1, "ACDEF"), (3, "KLMNP"), (4, "AC1")])
    fasta = tmp_path / "a.fa"
    fasta.write_text(">one\nACDE\nFGH\n\n>two\n>three\nKLMN\n")
    assert mc.read_peptides(fasta)[1] == [(1, "ACDEFGH"), (5, ""), (6, "KLMN")]
    table = tmp_path / "a.csv"
    table.write_text("name,Sequence\nx,ACDEF\n\ny,KLMNP\n")
    assert mc.read_peptides(table)[1] == [(2, "ACDEF"), (4, "KLMNP")]
    table.write_text("name,seq\nx,ACDEF\n")
    with pytest.raises(mc.DataError, match="line 1: no 'sequence' column"):
        mc.read_peptides(table)
    assert mc.peptide_problem("", "ACD") == "no sequence"


def test_cli_prints_the_table_in_input_order_and_names_bad_lines(run, trained_run, tmp_path):
    where = ["--run-name", trained_run.name, "--checkpoint-dir", trained_run.parent, "--target", "P11111"]
    bad = tmp_path / "bad.txt"
    bad.write_text("PPLPACDKE\nAC*DE\nKRSWSKPLE\nACD\n")
    proc = cli("score", *where, "--input", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "line 2: '*' at position 3 is not a residue letter" in proc.stderr and "line 4: length 3" in proc.stderr

    lines = ["PPLPACDKE", "acdefghik", "AC*DE", "KRSWSKPLE", "ACD", "GGWWMNPQ"]
    proc = cli("score", *where, "--skip-invalid", stdin="\n".join(lines) + "\n")       # standard input
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split("\t") for ln in proc.stdout.splitlines()]
    assert rows[0] == list(mc.SCORE_COLUMNS) + ["skipped"]
    assert [r[0] for r in rows[1:]] == [p.upper() for p in lines]
    assert rows[3][1:6] == [""] * 5 and rows[3][6] == "line 3: '*' at position 3 is not a residue letter"
    assert rows[5][1:6] == [""] * 5 and rows[5][6] == "line 5: length 3 outside 4-20"
    valid = [1, 2, 4, 6]
    expected = mc.score(run, [lines[i - 1] for i in valid], "P11111")
    assert [float(rows[i][1]) for i in valid] == pytest.approx([r["score"] for r in expected], abs=2e-3)
    assert all(rows[i][5] == str(len(lines[i - 1])) and rows[i][6] == "" for i in valid)
    assert "skipped 2 of 6" in proc.stderr


def test_format_scores_ranks_best_first_and_keeps_skipped_rows_last():
    results = [{"peptide": "AAAA", "score": 1.0, "condition_bits": 9.0, "background_bits": 10.0,
                "any_target_bits": 9.5, "length": 4},
               {"peptide": "A1", "skipped": "line 2: bad"},
               {"peptide": "CCCC", "score": 3.5, "condition_bits": 7.0, "background_bits": 10.5,
                "any_target_bits": 8.25, "length": 4}]
    ranked = mc.format_scores(results, ranked=True).splitlines()
    assert [ln.split("\t")[0] for ln in ranked] == ["peptide", "CCCC", "AAAA", "A1"]
    assert ranked[1].split("\t")[1:] == ["3.500", "7.000", "10.500", "8.250", "4", ""]
    assert ranked[3].split("\t")[1:] == ["", "", "", "", "", "line 2: bad"]


# --- score on the command line: large inputs in batches, each printed as it is scored ------------


class StdoutSpy(io.StringIO):
    """A stdout that keeps what is written and notes each write in a list of events shared with a spy."""

    def __init__(self, events):
        super().__init__()
        self.events = events

    def write(self, text):
        self.events.append("write")
        return super().write(text)


class LineCounter(io.TextIOBase):
    """A stdout that keeps nothing but the number of lines written."""
    lines = 0

    def write(self, text):
        self.lines += text.count("\n")
        return len(text)

    def getvalue(self):
        return ""


@pytest.fixture
def score_spy(monkeypatch):
    """The events of a command: 'score' for each call of mc.score, 'write' for each write to stdout."""
    events, score = [], mc.score

    def spying_score(*args, **kwargs):
        events.append("score")
        return score(*args, **kwargs)
    monkeypatch.setattr(mc, "score", spying_score)
    return events


def score_in_process(trained_run, *argv, stdout=None, stdin=None, monkeypatch=None) -> tuple[int, str, str]:
    """`score` for P11111 through mc.main in this process: (exit code, stdout, stderr)."""
    out, err, code = stdout or io.StringIO(), io.StringIO(), 0
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            mc.main(["score", "--run-name", trained_run.name, "--checkpoint-dir", str(trained_run.parent),
                     "--target", "P11111", *map(str, argv)])
        except SystemExit as e:
            code = e.code or 0
    return code, out.getvalue(), err.getvalue()


def random_peptides(letters: str, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return ["".join(rng.choices(letters, k=rng.randint(mc.MIN_LEN, mc.MAX_LEN))) for _ in range(n)]


def assert_same_table(text: str, expected: str):
    """The same header, peptides, lengths and skipped reasons; figures equal to the last printed digit, give
    or take one (a float sum over other batch-mates may round the other way)."""
    rows, want = [[ln.split("\t") for ln in t.splitlines()] for t in (text, expected)]
    assert len(rows) == len(want) and rows[0] == want[0]
    length = mc.SCORE_COLUMNS.index("length")              # the figures lie between the peptide and its length
    figures = lambda row: [float(c) for c in row[1:length] if c]
    for got, expect in zip(rows[1:], want[1:]):
        assert [got[0]] + got[length:] == [expect[0]] + expect[length:]
        assert figures(got) == pytest.approx(figures(expect), abs=1.5e-3)


def test_cli_scores_a_large_file_batch_by_batch_printing_each_as_it_is_scored(run, trained_run, tmp_path,
                                                                               score_spy, monkeypatch):
    """9,000 peptides in batches of 2,000: the table of scoring them in one go, its first rows written
    before the second batch is scored, and a progress bar on stderr."""
    peptides = random_peptides(run.vocab.letters, 9000)
    path = tmp_path / "many.txt"
    path.write_text("\n".join(peptides) + "\n")
    monkeypatch.setattr(mc, "SCORE_BATCH", 2000)
    code, out, err = score_in_process(trained_run, "--input", path, stdout=StdoutSpy(score_spy))
    assert code == 0, err
    assert score_spy.count("score") == 5 and score_spy[:3] == ["score", "write", "write"]   # header, batch 1
    assert "9000/9000" in err
    assert_same_table(out, mc.format_scores(mc.score(run, peptides, "P11111")) + "\n")


def test_cli_reports_every_bad_line_before_scoring_any(trained_run, tmp_path, score_spy, monkeypatch):
    """A bad line in the last batch still stops the command before the first batch is scored or printed."""
    monkeypatch.setattr(mc, "SCORE_BATCH", 2)
    path = tmp_path / "bad.txt"
    path.write_text("PPLPACDKE\nAC*DE\nKRSWSKPLE\nGGWWMNPQ\nMKTAYIAK\nACD\n")
    code, out, err = score_in_process(trained_run, "--input", path)
    assert code == 2 and out == "" and score_spy == [] and "Traceback" not in err
    assert "2 problem(s) in 2 line(s)" in err and "line 2: '*' at position 3" in err and "line 6: length 3" in err
    assert "--skip-invalid" in err
    path.write_text("\n  \n")
    code, out, err = score_in_process(trained_run, "--input", path)
    assert code == 2 and out == "" and f"error: {path}: no peptides" in err
    code, out, err = score_in_process(trained_run, stdin="", monkeypatch=monkeypatch)
    assert code == 2 and out == "" and "error: standard input: no peptides" in err


def test_cli_skip_invalid_rows_keep_input_order_across_batches_from_a_file_or_stdin(run, trained_run, tmp_path,
                                                                                    score_spy, monkeypatch):
    """Batches of 3 with a batch of bad lines only: a row per line in input order, the same from a file as
    from standard input (which is read once)."""
    monkeypatch.setattr(mc, "SCORE_BATCH", 3)
    lines = ["PPLPACDKE", "AC*DE", "acdefghik", "ACD", "KL1MN", "AC DE", "KRSWSKPLE", "GGWWMNPQ"]
    path = tmp_path / "some.txt"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = score_in_process(trained_run, "--input", path, "--skip-invalid")
    assert code == 0 and "8/8" in err and "skipped 4 of 8" in err and score_spy.count("score") == 3
    valid = iter(mc.score(run, [p for p in lines if not mc.peptide_problem(p.upper(), run.vocab.letters)], "P11111"))
    expected = [next(valid) if not (why := mc.peptide_problem(p.upper(), run.vocab.letters))
                else {"peptide": p.upper(), "skipped": f"line {i}: {why}"} for i, p in enumerate(lines, start=1)]
    assert_same_table(out, mc.format_scores(expected) + "\n")
    assert [row.split("\t")[0] for row in out.splitlines()[1:]] == [p.upper() for p in lines]
    scored_before = score_spy.count("score")
    from_stdin = score_in_process(trained_run, "--skip-invalid", stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    assert from_stdin[:2] == (0, out) and "skipped 4 of 8" in from_stdin[2]
    assert score_spy.count("score") == scored_before + 3


def test_cli_holds_a_batch_of_a_file_at_a_time(trained_run, tmp_path, monkeypatch):
    """100,000 peptides (a stand-in score, so only the reading and printing are measured): the Python heap
    holds a batch or so, not the input (its entries alone took 15 MB)."""
    path = tmp_path / "many.txt"
    path.write_text("\n".join(random_peptides(mc.RESIDUES, 100_000)) + "\n")
    figures = dict.fromkeys(mc.SCORE_COLUMNS[1:-1], 0.0)
    monkeypatch.setattr(mc, "score", lambda run, peptides, *args, **options: [{"peptide": p, **figures, "length": len(p)}
                                                                    for p in peptides])
    out = LineCounter()
    tracemalloc.start()
    try:
        code, _, err = score_in_process(trained_run, "--input", path, stdout=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert out.lines == 100_001 and peak < 5e6, f"peak Python heap {peak / 1e6:.1f} MB"


# --- is the score worth anything? evaluate's AUROC report --------------------------------------


def test_paired_auroc_on_hand_made_scores():
    r = ev.paired_auroc({"model": np.array([3.0, 2.0, 1.0, 0.0]), "composition": np.array([0.0, 1.0, 1.0, 2.0])},
                        n_pos=2, n_boot=200)
    assert (r["positives"], r["negatives"]) == (2, 2)
    assert r["model"]["auroc"] == 1.0 and r["model"]["interval"] == [1.0, 1.0]
    assert r["composition"]["auroc"] == pytest.approx(0.5 / 4)           # 0 < 1, 0 < 2, 1 = 1 (half), 1 < 2
    assert r["difference"]["composition"]["value"] == pytest.approx(1.0 - r["composition"]["auroc"])
    lo, hi = r["composition"]["interval"]
    assert lo <= r["composition"]["auroc"] <= hi
    same = ev.paired_auroc({"a": np.arange(10.0), "b": np.arange(10.0)}, n_pos=5)
    assert same["a"]["auroc"] == 0.0 and same["difference"]["b"] == {"value": 0.0, "interval": [0.0, 0.0]}


def test_evaluate_reports_score_auroc_per_target_beside_composition_and_nearest_neighbour(trained_run):
    report = ev.evaluate(trained_run, n_samples=50, n_per_target=20)
    auroc = report["score_auroc"]
    assert set(auroc["targets"]) == set(FIXTURE_MOTIFS)
    for target, sets in auroc["targets"].items():
        assert {"background", "other_targets", "shuffles"} <= set(sets) <= {
            "background", "other_targets", "shuffles", "other_targets, close", "other_targets, new"}
        split = [sets[k]["positives"] for k in ("other_targets, close", "other_targets, new") if k in sets]
        assert sum(split) == sets["other_targets"]["positives"]     # each peptide close to a known binder or new
        for name, r in sets.items():
            assert r["positives"] >= auroc["min_positives"] and 0 < r["negatives"] <= auroc["max_rows"] * 5
            for scorer in ("model", "composition", "nearest"):
                lo, hi = r[scorer]["interval"]
                assert 0 <= lo <= r[scorer]["auroc"] <= hi <= 1
            assert set(r["difference"]) == {"composition", "nearest", "background ratio", "target ratio"}
        assert sets["background"]["model"]["auroc"] > 0.7, (target, sets)   # the fixture's targets are easy
        assert abs(sets["shuffles"]["composition"]["auroc"] - 0.5) < 0.1  # a shuffle has its peptide's composition
        assert sets["shuffles"]["negatives"] == sets["shuffles"]["positives"] * auroc["shuffles"]
    weighted = auroc["weighted"]["other_targets"]
    parts = [auroc["targets"][t]["other_targets"] for t in FIXTURE_MOTIFS]
    assert weighted["positives"] == sum(r["positives"] for r in parts)
    assert weighted["model"]["auroc"] == pytest.approx(
        sum(r["positives"] * r["model"]["auroc"] for r in parts) / weighted["positives"])
    text = ev.format_report(report).split("Score ranking")[1]
    assert all(t in text for t in FIXTURE_MOTIFS) and "composition" in text and "nearest" in text
    assert "WEIGHTED        other targets" in text and "model - nearest" in text
    assert "background ratio" in text and "target ratio" in text            # each part of the score, measured


def test_weighted_auroc_weighs_targets_by_their_positives():
    a = ev.auroc_bootstrap({"m": np.array([1.0, 0.0]), "c": np.array([0.0, 1.0])}, n_pos=1, n_boot=50)
    b = ev.auroc_bootstrap({"m": np.array([1.0, 1.0, 1.0, 0.0]), "c": np.array([1.0, 1.0, 1.0, 0.0])}, n_pos=3,
                           n_boot=50)
    w = ev.weighted_auroc([(1, a[2], a[0], a[1]), (3, b[2], b[0], b[1])])
    assert (w["positives"], w["negatives"]) == (4, 2)
    assert w["m"]["auroc"] == pytest.approx(1.0) and w["c"]["auroc"] == pytest.approx(0.75)
    assert w["difference"]["c"]["value"] == pytest.approx(0.25) and w["difference"]["c"]["interval"] == [0.25, 0.25]


def test_nearness_tells_samples_near_their_targets_peptides_from_samples_near_others():
    """Two targets whose held-out peptides are variants of their training peptides: samples that copy the
    target's training peptides sit nearer its held-out peptides than the other target's samples do, and are
    not novel; samples of random letters are novel and near nothing."""
    rng = np.random.default_rng(0)
    variant = lambda core: "".join(c if rng.random() > 0.2 else rng.choice(list(mc.RESIDUES)) for c in core)
    cores = {"T1": "KLPPWWRKE", "T2": "DEGYTNMSF"}
    rows = lambda n, label_of: mc.Rows("x", np.ones(2 * n, dtype=np.int64), [t for t in cores for _ in range(n)],
                                       [variant(cores[t]) + "A" * label_of for t in cores for _ in range(n)], None,
                                       np.arange(2 * n))
    train, val = rows(20, 1), rows(5, 0)

    class Samples(dict):
        run = type("R", (), {"vocab": mc.Vocab(mc.RESIDUES, list(cores))})()
    copies, noise = Samples(), Samples()
    for t in cores:
        copies[t] = [s for s, x in zip(train.sequences, train.targets) if x == t]
        noise[t] = ["".join(rng.choice(list(mc.RESIDUES), size=10)) for _ in range(20)]
    near = ev.nearness_report(val, train, copies)
    assert set(near) == set(cores) and all(m["nearer"] > 2 * m["nearer_se"] for m in near.values())
    assert all(m["copies"] == 1.0 and m["novel"] == 0.0 for m in near.values())
    assert all(m["data_nearer"] == pytest.approx(m["nearer"]) for m in near.values())   # they are the data
    far = ev.nearness_report(val, train, noise)
    assert all(m["novel"] == 1.0 and abs(m["nearer"]) < 3 * m["nearer_se"] for m in far.values())
    text = ev.format_nearness(near)
    assert "T1" in text and "nearer its own held-out peptides" in text


# --- variants of a parent, templates -----------------------------------------------------------


def test_strength_zero_returns_the_parent_and_more_strength_moves_further(run):
    parent = "KPPLPAEMKS"
    assert mc.generate_variants(run, parent, n=20, strength=0, target="P11111") == [parent] * 20
    identity = {}
    for s in (0.2, 0.6, 1.0):
        variants = mc.generate_variants(run, parent.lower(), n=100, strength=s, target="P11111", seed=1)
        assert all(len(v) == len(parent) and set(v) <= set(mc.RESIDUES) for v in variants)
        identity[s] = np.mean([mc.identity(v, parent) for v in variants])
    assert identity[0.2] > identity[0.6] > identity[1.0], identity
    assert [mc.strength_step(s, 10) for s in (0, 0.05, 0.3, 0.5, 1.0)] == [0, 1, 3, 5, 10]


def test_every_template_output_matches_its_template(run):
    for template in ("xxPPLPxx", "rswskpxxxx", "XGGWWXXXXXXXXX", "ACDEF"):
        outputs = mc.fill_template(run, template, n=50, target="O33333", seed=2)
        assert all(len(p) == len(template) and set(p) <= set(mc.RESIDUES) for p in outputs)
        for p in outputs:
            assert all(t in "xX" or t.upper() == c for t, c in zip(template, p)), (template, p)
        if "x" in template.lower():
            assert len(set(outputs)) >= 5                         # the x positions are sampled, not fixed


def test_variants_and_templates_reject_bad_requests(run):
    variants = lambda parent, **kw: mc.generate_variants(run, parent, n=3, **kw)
    template = lambda template, **kw: mc.fill_template(run, template, n=3, **kw)
    cases = [(variants, dict(parent="AC1DEF"), r"parent 'AC1DEF': '1' at position 3 is not a residue letter"),
             (variants, dict(parent="ACXDEF"), r"'X' at position 3 is not among this model's residue letters"),
             (variants, dict(parent="ACD"), r"parent 'ACD': length 3 outside 4-20"),
             (variants, dict(parent="ACDEFG", strength=1.5), r"strength must lie in \[0, 1\]"),
             (variants, dict(parent="ACDEFG", strength=-0.1), r"strength must lie in \[0, 1\]"),
             (variants, dict(parent="ACDEFG", label=0, target="P11111"), "a target goes with label 1"),
             (template, dict(template="xx.xx"), r"template 'xx.xx': '.' at position 3 is not a residue letter or x"),
             (template, dict(template="x" * 21), "length 21 outside 4-20"),
             (template, dict(template="xxPPxx", target="NOPE"), "unknown target 'NOPE'")]
    for mode, kwargs, message in cases:
        with pytest.raises(mc.DataError, match=message):
            mode(**kwargs)


def test_cli_variants_with_identity_and_templates(trained_run):
    where = ["--run-name", trained_run.name, "--checkpoint-dir", trained_run.parent]
    proc = cli("generate", *where, "--from", "KPPLPAEMKS", "--strength", "0.3", "-n", 5, "--target", "P11111", "-v")
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split("\t") for ln in proc.stdout.splitlines()]
    assert rows[0] == ["peptide", "identity_to_parent"] and len(rows) == 6
    assert all(float(i) == pytest.approx(mc.identity(p, "KPPLPAEMKS"), abs=1e-3) for p, i in rows[1:])
    assert "mean identity" in proc.stderr
    proc = cli("generate", *where, "--from", "KPPLPAEMKS", "--template", "xxPPLPxx")
    assert proc.returncode == 2 and "not allowed with argument --from" in proc.stderr
    proc = cli("generate", *where, "--strength", "0.3")
    assert proc.returncode == 2 and "--strength goes with --from" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("generate", *where, "--template", "xxPPLPxx", "--min-length", "8")
    assert proc.returncode == 2 and "keep the length of their peptide" in proc.stderr
