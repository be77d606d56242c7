"""Loading, validating, tokenizing and splitting datasets."""
import gzip

import numpy as np
import pytest

import mimir_core as mc
from conftest import write_fixture


def write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


GOOD = "label,target,sequence\n1,P11111,ACDEFGH\n0,,KLMNPQRS\n0,,WWYYAA\n"


def test_valid_file_loads(tmp_path):
    rows = mc.load_rows(write(tmp_path, GOOD))
    assert rows.labels.tolist() == [1, 0, 0]
    assert rows.targets == ["P11111", "", ""]
    assert rows.lines.tolist() == [2, 3, 4]
    assert rows.sources is None


def test_lowercase_crlf_bom_gzip_and_source_column_are_accepted(tmp_path):
    text = "\ufefflabel,target,sequence,source\r\n1,P11111,acdefgh,Q1\r\n0,,klmnpqrs,Q2\r\n"
    p = tmp_path / "d.csv.gz"
    with gzip.open(p, "wb") as f:
        f.write(text.encode("utf-8"))
    rows = mc.load_rows(p)
    assert rows.sequences == ["ACDEFGH", "KLMNPQRS"]
    assert rows.sources == ["Q1", "Q2"]


@pytest.mark.parametrize("body, line, reason", [
    ("1,P11111,ACDEFGH\n2,,ACDEFG\n", 3, "label '2' is not 0 or 1"),
    ("1,,ACDEFGH\n", 2, "label-1 row without a target"),
    ("0,P11111,ACDEFGH\n", 2, "label-0 row with target 'P11111'"),
    ("0,,ACDE1GH\n", 2, "'1' at position 5 is not a residue letter"),
    ("0,,ACD\n", 2, "length 3 outside 4-20"),
    ("0,," + "A" * 21 + "\n", 2, "length 21 outside 4-20"),
    ("0,,ACDEFGH\n0,,ACDEFGH\n", 3, "duplicate of line 2"),
    ("1,P1,ACDEFGH\n0,,ACDEFGH\n", 3, "background sequence equals the interacting peptide on line 2"),
    ("0,,ACDEFGH,extra\n", 2, "4 fields, expected 3"),
])
def test_each_problem_is_reported_with_file_and_line(tmp_path, body, line, reason):
    p = write(tmp_path, "label,target,sequence\n" + body)
    with pytest.raises(mc.DataError) as err:
        mc.load_rows(p)
    msg = str(err.value)
    assert str(p) in msg and f"line {line}: {reason}" in msg and "--skip-invalid" in msg


def test_bad_header_is_an_error(tmp_path):
    with pytest.raises(mc.DataError, match=r"line 1: bad header seq,label"):
        mc.load_rows(write(tmp_path, "seq,label\nACDE,0\n"))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(mc.DataError, match="file not found"):
        mc.load_rows(tmp_path / "nope.csv")
    with pytest.raises(mc.DataError, match="not a readable CSV"):
        mc.load_rows(write(tmp_path, b"\x1f\x8b\x08garbage", name="bad.csv.gz"))


def test_all_problems_are_counted_and_skip_invalid_reports_them(tmp_path, capsys):
    p = write(tmp_path, "label,target,sequence\n1,P1,ACDEFGH\n0,,AC\n0,,ACDXFGH\n1,,KKKKK\n0,,Z9\n0,,MMMMM\n")
    with pytest.raises(mc.DataError, match=r"4 problem\(s\) in 3 line\(s\)"):
        mc.load_rows(p)
    rows = mc.load_rows(p, skip_invalid=True)
    assert rows.sequences == ["ACDEFGH", "ACDXFGH", "MMMMM"]      # X is a (rare) residue letter
    assert rows.lines.tolist() == [2, 4, 7]
    err = capsys.readouterr().err
    assert "Skipping 4 problem(s)" in err and "line 3: length 2 outside 4-20" in err


def test_vocab_has_standard_letters_plus_rare_ones_seen_and_round_trips(tmp_path):
    rows = mc.load_rows(write(tmp_path, "label,target,sequence\n1,T2,ACDXU\n1,T1,WYWYB\n0,,KKKKLL\n"))
    vocab = mc.Vocab.from_rows(rows)
    assert vocab.letters == mc.RESIDUES + "BUX" and vocab.size == 24
    assert vocab.targets == ["T1", "T2"] and vocab.target_ids(rows.targets).tolist() == [2, 1, 0]
    tokens = vocab.encode(rows.sequences)
    assert tokens.shape == (3, mc.MAX_LEN) and tokens.dtype == np.uint8
    assert (tokens[0, 5:] == mc.PAD).all() and (tokens[0, :5] > 0).all()
    assert vocab.decode(tokens) == rows.sequences


def test_unknown_target_lists_close_matches():
    vocab = mc.Vocab(mc.RESIDUES, ["Q96C01", "Q96C02", "P12345"])
    with pytest.raises(mc.DataError, match=r"unknown target 'Q96C0'.*close matches: Q96C0[12], Q96C0[12]"):
        vocab.target_id("Q96C0")


def test_split_is_deterministic_grouped_by_source_and_covers_both_labels(tmp_path):
    rows = mc.load_rows(write_fixture(tmp_path / "d.csv"))
    train1, val1 = mc.split_indices(rows, 0.1)
    train2, val2 = mc.split_indices(rows, 0.1)
    assert np.array_equal(val1, val2) and np.array_equal(train1, train2)
    assert len(np.intersect1d(train1, val1)) == 0 and len(train1) + len(val1) == len(rows.sequences)
    assert set(rows.labels[val1]) == {0, 1}
    train_sources = {rows.sources[i] for i in train1}
    assert not train_sources & {rows.sources[i] for i in val1}          # no protein on both sides
    assert 0.02 < len(val1) / len(rows.sequences) < 0.3


def test_split_holds_out_each_label_even_when_tiny(tmp_path):
    p = write(tmp_path, "label,target,sequence\n1,T1,ACDEFG\n1,T1,KLMNPQ\n" +
              "".join(f"0,,{s}\n" for s in ["AAAAC", "AAAAD", "AAAAE", "AAAAF"]))
    _, val = mc.split_indices(mc.load_rows(p), 0.01)
    assert set(mc.load_rows(p).labels[val]) == {0, 1}


def test_a_million_rows_load_quickly(tmp_path):
    """Not a timed assertion: checks a 1M-row file loads and validates completely (time printed)."""
    import time
    rng = np.random.default_rng(0)
    letters = np.frombuffer(mc.RESIDUES.encode(), dtype=np.uint8)
    lengths = rng.integers(4, 21, 1_000_000)
    raw = letters[rng.integers(0, 20, (1_000_000, 20))]
    seqs = {bytes(r[:n]).decode() for r, n in zip(raw, lengths)}
    p = tmp_path / "big.csv"
    p.write_text("label,target,sequence\n" + "".join(f"0,,{s}\n" for s in seqs))
    start = time.perf_counter()
    rows = mc.load_rows(p)
    print(f"\nloaded {len(rows.sequences):,} rows in {time.perf_counter() - start:.1f} s")
    assert len(rows.sequences) == len(seqs)
