"""Building a dataset from protein FASTA files: parsing, motif peptides, background windows, the CSV,
and the shipped demo data."""
import csv
import gzip
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import build_dataset as bd
import mimir_core as mc
import mimir_eval as ev

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


def protein(rng, length, letters=mc.RESIDUES):
    return "".join(rng.choice(list(letters), size=length))


def write_fasta(path, records, gz=None):
    text = "".join(f">{h}\n{s[:50]}\n{s[50:]}\n" for h, s in records)
    if gz or (gz is None and str(path).endswith(".gz")):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        Path(path).write_text(text)
    return Path(path)


MOTIFS = [
    {"target": "NEDD4", "elm_class": "LIG_WW_1", "description": "PPxY", "regex": "PP.Y", "anchor": "internal"},
    {"target": "DLG4", "elm_class": "LIG_PDZ_Class_1", "description": "C-terminal (S/T)x(V/I/L)",
     "regex": "[ST].[VIL]$", "anchor": "c_terminal"},
]


@pytest.fixture
def inputs(tmp_path):
    """Human, viral and other FASTA files (a few X letters, motifs planted), a motifs JSON and an
    interactions CSV."""
    rng = np.random.default_rng(7)
    body = "ACDEFGHIKLMNQRVWY"                            # no P, S, T: the motifs occur only where planted
    human, viral = [], []
    for i in range(24):
        seq = protein(rng, int(rng.integers(60, 300)), body)
        seq = seq[:20] + "PPAY" + seq[24:40] + "X" + seq[41:] + ("ETSV" if i % 2 else "")
        human.append((f"sp|H{i:05d}|PROT{i}_HUMAN Protein {i} OS=Homo sapiens OX=9606 GN=G{i} PE=1 SV=1", seq))
    for i in range(16):
        seq = protein(rng, int(rng.integers(60, 300)), body)
        viral.append((f"tr|V{i:05d}|V{i}_9VIRU Protein OS=Dengue virus 2 OX=11060 PE=4 SV=1",
                      seq[:30] + "PPGY" + seq[34:] + "QTAL"))
    viral.append(("tr|V99999|V99_9VIRU Capsid (Fragment) OS=Dengue virus 2 PE=4 SV=1", "MKHHWERQQSAV"))
    other = [(f"sp|O{i:05d}|O{i}_MOUSE Protein OS=Mus musculus OX=10090", protein(rng, 200, body)) for i in range(4)]
    (tmp_path / "motifs.json").write_text(json.dumps(MOTIFS))
    (tmp_path / "pairs.csv").write_text("target,sequence,source\nGRB2,PPPPLPRK,P62993\nGRB2,APPVPPRR,\n")
    return {"human": write_fasta(tmp_path / "human.fasta.gz", human),
            "viral": write_fasta(tmp_path / "viral.fasta", viral),
            "other": write_fasta(tmp_path / "other.fasta", other),
            "motifs": tmp_path / "motifs.json", "pairs": tmp_path / "pairs.csv",
            "records": {"human": human, "viral": viral, "other": other}}


def build(inputs, out, seed=0, **kw):
    args = dict(human_fastas=[inputs["human"]], viral_fastas=[inputs["viral"]], motifs_path=inputs["motifs"],
                interactions_csv=inputs["pairs"], n_human=3000, n_viral=2000, seed=seed)
    return bd.build_dataset(out, **{**args, **kw})


def read_csv(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------------------------
# FASTA
# ---------------------------------------------------------------------------------------------


def test_read_fasta_handles_gzip_crlf_blank_lines_and_lowercase(tmp_path):
    p = tmp_path / "p.fasta.gz"
    with gzip.open(p, "wb") as f:
        f.write(b">sp|P12345|A_HUMAN first OS=Homo sapiens\r\nacdef\r\n\r\nGHIKX\r\n\n>second  \r\nMNPQ\r\n")
    assert bd.read_fasta(p) == [("sp|P12345|A_HUMAN first OS=Homo sapiens", "ACDEFGHIKX"), ("second", "MNPQ")]


@pytest.mark.parametrize("text, line, reason", [
    ("ACDEF\n>a\nACDE\n", 1, "sequence before the first '>' header"),
    ("\n>a\nACDE\nAC1E\n", 4, "'1' at column 3 is not a residue letter"),
    (">a\nACDE*\n", 2, "'*' at column 5 is not a residue letter"),
    (">a\n>b\nACDE\n", 1, "record 'a' has no sequence"),
    (">a\nACDE\n\n>b\n", 4, "record 'b' has no sequence"),
    (">a\nACDE\n>\nACDE\n", 3, "empty header"),
])
def test_bad_fasta_is_an_error_naming_file_and_line(tmp_path, text, line, reason):
    p = tmp_path / "bad.fasta"
    p.write_text(text)
    with pytest.raises(mc.DataError, match=re.escape(f"{p}, line {line}: {reason}")):
        bd.read_fasta(p)


def test_empty_or_missing_fasta_is_an_error(tmp_path):
    (tmp_path / "empty.fasta").write_text("\n\n")
    with pytest.raises(mc.DataError, match="no FASTA records"):
        bd.read_fasta(tmp_path / "empty.fasta")
    with pytest.raises(mc.DataError, match="file not found"):
        bd.read_fasta(tmp_path / "missing.fasta")


def test_header_fields():
    h = "sp|Q9Y4B4|ARIP4_HUMAN Helicase ARIP4 OS=Homo sapiens GN=RAD54L2 PE=1 SV=4 Split=0"
    assert bd.accession(h) == "Q9Y4B4" and bd.organism(h) == "Homo sapiens" and bd.is_human(h)
    v = "tr|W0FSK4|W0FSK4_9FLAV Genome polyprotein (Fragment) OS=Dengue virus 3 PE=4 SV=1"
    assert bd.accession(v) == "W0FSK4" and bd.is_viral(v) and not bd.is_human(v)
    assert bd.accession("ENSP0001.2 some protein") == "ENSP0001.2" and bd.organism("x") == ""


def test_subset_fasta_keeps_matching_records_deterministically(tmp_path, inputs):
    src = write_fasta(tmp_path / "all.fasta", inputs["records"]["human"] + inputs["records"]["viral"])
    assert bd.subset_fasta(src, tmp_path / "a.fasta.gz", bd.is_viral) == 17
    bd.subset_fasta(src, tmp_path / "b.fasta.gz", bd.is_viral)
    assert (tmp_path / "a.fasta.gz").read_bytes() == (tmp_path / "b.fasta.gz").read_bytes()
    assert bd.read_fasta(tmp_path / "a.fasta.gz") == inputs["records"]["viral"]


# ---------------------------------------------------------------------------------------------
# Motif peptides
# ---------------------------------------------------------------------------------------------


def test_motif_peptides_contain_their_motif_and_c_terminal_ones_end_the_protein(inputs):
    records = inputs["records"]["human"] + inputs["records"]["viral"]
    # one window per match: 40 planted PPxY, 12 + 16 C-termini in (S/T)x(V/I/L) (the fragment is skipped)
    rows = bd.motif_peptides(records, MOTIFS, np.random.default_rng(0), per_class_max=100, windows_per_match=1)
    assert Counter(t for t, _, _ in rows) == {"NEDD4": 40, "DLG4": 28}
    # more windows per match (other lengths) until per_class_max
    rows = bd.motif_peptides(records, MOTIFS, np.random.default_rng(0), per_class_max=60)
    counts = Counter(t for t, _, _ in rows)
    assert counts == {"NEDD4": 60, "DLG4": 60}
    by_acc = {bd.accession(h): s for h, s in records}
    for target, pep, src in rows:
        m = next(m for m in MOTIFS if m["target"] == target)
        assert re.search(m["regex"], pep) and pep in by_acc[src]
        assert mc.MIN_LEN <= len(pep) <= mc.MAX_LEN and set(pep) <= set(mc.RESIDUES)
        if m["anchor"] == "c_terminal":
            assert by_acc[src].endswith(pep)
    for target in counts:
        peps = [p for t, p, _ in rows if t == target]
        assert len(set(peps)) == len(peps)
    again = bd.motif_peptides(records, MOTIFS, np.random.default_rng(0), per_class_max=60)
    assert again == rows


@pytest.mark.parametrize("motif, reason", [
    ({"target": "A", "regex": "PP.Y", "anchor": "middle"}, "is not 'internal' or 'c_terminal'"),
    ({"target": "A", "regex": "[ST].V", "anchor": "c_terminal"}, "must end with '\\$'"),
    ({"target": "A", "regex": "PP(.Y"}, "bad regex"),
    ({"regex": "PP.Y"}, "needs a 'target'"),
])
def test_bad_motifs_are_errors(tmp_path, motif, reason):
    p = tmp_path / "m.json"
    p.write_text(json.dumps([motif]))
    with pytest.raises(mc.DataError, match=f"motif 1: .*{reason}"):
        ev.read_motifs(p)


def test_bad_interactions_are_errors_with_line(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("sequence,target\n")
    with pytest.raises(mc.DataError, match="line 1: bad header"):
        bd.read_interactions(p)
    p.write_text("target,sequence\nGRB2,PPPPLPRK\nGRB2,PPP\n")
    with pytest.raises(mc.DataError, match="line 3: 'PPP' is not a peptide"):
        bd.read_interactions(p)


# ---------------------------------------------------------------------------------------------
# Background windows
# ---------------------------------------------------------------------------------------------


def test_background_windows_guarantees():
    rng = np.random.default_rng(1)
    proteins = [(f"sp|P{i:05d}|X", protein(rng, 300)) for i in range(10)]
    probs = np.zeros(mc.MAX_LEN + 1)
    probs[5], probs[9] = 0.3, 0.7
    # exclude many windows the sampler would otherwise draw
    exclude = {s[j:j + k] for _, s in proteins for j in range(0, 290, 3) for k in (5, 9)}
    rows, skipped = bd.background_windows(proteins, 2003, probs, exclude, np.random.default_rng(0))
    seqs = [s for s, _ in rows]
    assert len(rows) == 2003 and skipped == 0
    assert len(set(seqs)) == len(seqs) and not set(seqs) & exclude
    lengths = Counter(len(s) for s in seqs)
    assert set(lengths) == {5, 9} and abs(lengths[5] / 2003 - 0.3) < 0.03
    per_protein = Counter(src for _, src in rows)
    assert len(per_protein) == 10 and max(per_protein.values()) - min(per_protein.values()) <= 1
    by_acc = {bd.accession(h): s for h, s in proteins}
    assert all(s in by_acc[src] for s, src in rows)
    assert bd.background_windows(proteins, 2003, probs, exclude, np.random.default_rng(0)) == (rows, skipped)


def test_non_residue_windows_are_skipped_and_counted():
    rng = np.random.default_rng(2)
    dirty = "".join(protein(rng, 5) + "X" for _ in range(40))     # every 8-residue window holds an X
    proteins = [("clean", protein(rng, 400)), ("dirty", dirty)]
    probs = np.zeros(mc.MAX_LEN + 1)
    probs[8] = 1
    rows, skipped = bd.background_windows(proteins, 50, probs, set(), np.random.default_rng(0))
    # the dirty protein's 25 rows are each redrawn BACKGROUND_TRIES times, then filled from the clean one
    assert skipped == 25 * bd.BACKGROUND_TRIES
    assert len(rows) == 50 and all("X" not in s and src == "clean" for s, src in rows)


def test_background_errors():
    probs = np.zeros(mc.MAX_LEN + 1)
    probs[8] = 1
    with pytest.raises(mc.DataError, match="cannot supply 100 unique background windows"):
        bd.background_windows([("a", "ACDEFGHIKL")], 100, probs, set(), np.random.default_rng(0))
    with pytest.raises(mc.DataError, match="no protein is 8 residues long"):
        bd.background_windows([("a", "ACDEFGH")], 1, probs, set(), np.random.default_rng(0))
    probs[2] = 1
    with pytest.raises(mc.DataError, match="length_probs"):
        bd.background_windows([("a", "ACDEFGHIKL")], 1, probs, set(), np.random.default_rng(0))


def test_length_helpers():
    c0, c1 = bd.length_histogram(["ACDEF"] * 3), bd.length_histogram(["ACDEFGHIK"] * 3)
    assert c0.shape == (mc.MAX_LEN + 1,) and c0[5] == 3
    assert mc.length_distributions_match(c0, c1) == (False, 1.0)
    assert mc.length_distributions_match(c0, c0) == (True, 0.0)
    table = mc.format_length_table(c0, c1)
    assert "     5         3  1.0000         0  0.0000" in table and "NOT below" in table


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------


def test_build_is_deterministic_under_seed(tmp_path, inputs):
    build(inputs, tmp_path / "a.csv.gz")
    build(inputs, tmp_path / "b.csv.gz")
    build(inputs, tmp_path / "c.csv.gz", seed=1)
    build(inputs, tmp_path / "a.csv")
    a = (tmp_path / "a.csv.gz").read_bytes()
    assert a == (tmp_path / "b.csv.gz").read_bytes()
    assert a != (tmp_path / "c.csv.gz").read_bytes()
    assert gzip.decompress(a) == (tmp_path / "a.csv").read_bytes()


def test_build_guarantees(tmp_path, inputs):
    s = build(inputs, tmp_path / "d.csv.gz", other_fastas=[inputs["other"]])
    rows = read_csv(tmp_path / "d.csv.gz")
    assert rows[0] == ["label", "target", "sequence", "source"]
    labels = [r[0] for r in rows[1:]]
    n1 = s["n_interacting"]
    assert labels == ["1"] * n1 + ["0"] * 5000                     # label-1 first; counts honoured
    pos, bg = rows[1:n1 + 1], rows[n1 + 1:]
    assert pos[:2] == [["1", "GRB2", "PPPPLPRK", "P62993"], ["1", "GRB2", "APPVPPRR", ""]]
    assert s["per_target"] == dict(Counter(r[1] for r in pos)) and set(s["per_target"]) == {"GRB2", "NEDD4", "DLG4"}
    peptides = {r[2] for r in pos}
    background = [r[2] for r in bg]
    assert len(set(background)) == 5000 and not peptides & set(background)
    assert all(r[1] == "" for r in bg)
    ok, tv = mc.length_distributions_match(bd.length_histogram(background), bd.length_histogram([r[2] for r in pos]))
    assert ok and tv == pytest.approx(s["length_tv"])
    # human rows come from the human and other files, viral rows from the viral file
    acc = {k: {bd.accession(h) for h, _ in v} for k, v in inputs["records"].items()}
    assert {r[3] for r in bg[:3000]} == acc["human"] | acc["other"]
    assert {r[3] for r in bg[3000:]} <= acc["viral"]
    assert s["n_human"] == 3000 and s["n_viral"] == 2000 and s["skipped_nonresidue"]["human"] > 0


def test_build_without_interacting_peptides_is_an_error(tmp_path, inputs):
    with pytest.raises(mc.DataError, match="no interacting peptides"):
        build(inputs, tmp_path / "x.csv", motifs_path=None, interactions_csv=None)


# ---------------------------------------------------------------------------------------------
# The shipped demo data
# ---------------------------------------------------------------------------------------------

REBUILD_FLAGS = ["--human", str(DEMO / "human.fasta.gz"), "--viral", str(DEMO / "viral.fasta.gz"),
                 "--motifs", str(DEMO / "motifs.json"), "--n-human", "20000", "--n-viral", "20000", "--seed", "0"]


def test_demo_dataset_rebuilds_byte_for_byte(tmp_path, capsys):
    out = tmp_path / "dataset.csv.gz"
    bd.main([*REBUILD_FLAGS, "--out", str(out)])
    assert "1800 interacting peptides" in capsys.readouterr().out
    shipped = (DEMO / "dataset.csv.gz").read_bytes()
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(shipped)
    assert out.read_bytes() == shipped


def test_demo_label1_rows_are_motif_windows_of_the_shipped_proteins():
    proteins = {bd.accession(h): (h, s) for f in ("human.fasta.gz", "viral.fasta.gz")
                for h, s in bd.read_fasta(DEMO / f)}
    motifs = {m["target"]: m for m in ev.read_motifs(DEMO / "motifs.json")}
    rows = read_csv(DEMO / "dataset.csv.gz")[1:]
    pos = [r for r in rows if r[0] == "1"]
    counts = Counter(r[1] for r in pos)
    assert len(counts) >= 8 and min(counts.values()) >= 100 and set(counts) == set(motifs)
    for _, target, pep, src in pos:
        m, (header, seq) = motifs[target], proteins[src]
        assert re.search(m["regex"], pep) and pep in seq
        if m["anchor"] == "c_terminal":
            assert seq.endswith(pep) and "(Fragment)" not in header
    assert Counter(r[0] for r in rows)["0"] == 40000
    assert all(bd.is_human(h) for h, _ in bd.read_fasta(DEMO / "human.fasta.gz"))
    assert all(bd.is_viral(h) for h, _ in bd.read_fasta(DEMO / "viral.fasta.gz"))
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 3_000_000


# ---------------------------------------------------------------------------------------------
# The shipped real pairs (data/pepnn)
# ---------------------------------------------------------------------------------------------

PEPNN = ROOT / "data" / "pepnn"
PEPNN_FLAGS = ["--human", "data/demo/human.fasta.gz", "--viral", "data/demo/viral.fasta.gz",
               "--interactions", "data/pepnn/pairs.csv.gz", "--n-human", "15000", "--n-viral", "10000", "--seed", "0"]


def test_real_pairs_dataset_rebuilds_byte_for_byte_from_the_shipped_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)                        # the flags as rebuild.sh gives them, from the repository root
    out = tmp_path / "dataset.csv.gz"
    bd.main([*PEPNN_FLAGS, "--out", str(out)])     # the interactions file is gzipped
    assert "1761 interacting peptides" in capsys.readouterr().out
    shipped = (PEPNN / "dataset.csv.gz").read_bytes()
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(shipped)
    assert out.read_bytes() == shipped
    assert " ".join([*PEPNN_FLAGS, "--out", "data/pepnn/dataset.csv.gz"]) in \
        " ".join((PEPNN / "rebuild.sh").read_text().replace("\\\n", " ").split())


def test_real_pairs_dataset_holds_the_shipped_pairs_and_loads():
    assert mc.REAL_DATA == PEPNN / "dataset.csv.gz"
    pairs, receptors = read_csv(PEPNN / "pairs.csv.gz"), read_csv(PEPNN / "receptors.csv.gz")
    assert pairs[0] == ["target", "sequence"] and len(pairs) - 1 == 1761
    assert receptors[0] == ["target", "example_pdb", "example_chain", "n_peptides"] and len(receptors) - 1 == 573
    rows = mc.load_rows(mc.REAL_DATA)              # raises on any break of the contract
    labels = rows.labels.tolist()
    positives = [(t, s) for label, t, s in zip(labels, rows.targets, rows.sequences) if label == 1]
    assert positives == [tuple(r) for r in pairs[1:]]
    assert Counter(t for t, _ in positives) == {t: int(n) for t, _, _, n in receptors[1:]}
    assert all(re.fullmatch(r"C\d+", t) for t, _ in positives)
    demo = {bd.accession(h) for f in ("human.fasta.gz", "viral.fasta.gz") for h, _ in bd.read_fasta(DEMO / f)}
    background = [src for label, src in zip(labels, rows.sources) if label == 0]
    assert len(background) == 25000 and set(background) <= demo
    ok, report = mc.verify_data(mc.REAL_DATA)
    assert ok and "573 targets" in report
    assert {p.name for p in PEPNN.iterdir()} >= {"README.md", "LICENSE", "rebuild.sh", "pairs.csv.gz",
                                                  "receptors.csv.gz", "dataset.csv.gz"}
    assert "MIT License" in (PEPNN / "LICENSE").read_text()
    assert sum(p.stat().st_size for p in PEPNN.iterdir()) < 500_000


# --- verify-data ---------------------------------------------------------------------------------


def test_shipped_demo_passes_verify_data():
    ok, report = mc.verify_data(DEMO / "dataset.csv.gz")
    assert ok and "length distributions match" in report and "12 targets" in report


@pytest.mark.parametrize("rows, expect", [
    ("1,T1,ACDEFGHI\n0,,ACDEFGHI\n", "line 3: background sequence equals the interacting peptide on line 2"),
    ("1,T1,ACDEFGHI\n1,T1,ACDEFGHI\n", "line 3: duplicate of line 2"),
    ("1,,ACDEFGHI\n", "line 2: label-1 row without a target"),
    ("0,T1,ACDEFGHI\n", "line 2: label-0 row with target 'T1'"),
    ("1,T1,ACD\n", "line 2: length 3 outside 4-20"),
    ("1,T1,ACDEF*HI\n", "line 2: '*' at position 6 is not a residue letter"),
    ("x,T1,ACDEFGHI\n", "line 2: label 'x' is not 0 or 1"),
])
def test_verify_data_catches_each_violation(tmp_path, rows, expect):
    p = tmp_path / "bad.csv"
    p.write_text("label,target,sequence\n1,T2,KKLLMMNN\n0,,WWYYWWYY\n" + rows)
    ok, report = mc.verify_data(p)
    shifted = re.sub(r"line (\d+)", lambda m: f"line {int(m.group(1)) + 2}", expect)
    assert not ok and shifted in report


def test_verify_data_flags_mismatched_lengths_and_exits_1(tmp_path):
    p = tmp_path / "lengths.csv"
    p.write_text("label,target,sequence\n" + "".join(f"1,T1,{'A' * 6}{c}\n" for c in "CDEFG")
                 + "".join(f"0,,{'K' * 14}{c}\n" for c in "CDEFG"))
    proc = subprocess.run([sys.executable, str(ROOT / "mimir_core.py"), "verify-data", str(p)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "DO NOT match" in proc.stdout and "contract: all 10 rows hold" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "mimir_core.py"), "verify-data", str(DEMO / "dataset.csv.gz")],
                          capture_output=True, text=True)
    assert proc.returncode == 0
