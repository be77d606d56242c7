"""Build a Mimir dataset from protein FASTA files, following the recipe of the real set.

    python scripts/build_dataset.py --human human.fasta.gz --viral viral.fasta.gz \
        [--other more.fasta] [--interactions pairs.csv] [--motifs motifs.json] --out data.csv.gz

Label-1 rows come from an interactions CSV (target,sequence[,source]) and/or from windows cut around
the matches of short linear motifs (a motifs JSON, as in data/demo/motifs.json). Background rows are
windows of the proteins whose lengths follow the label-1 peptides' lengths, so a model cannot tell the
labels apart by length alone; proteins are visited round-robin so that no long protein dominates.
`python mimir_core.py verify-data OUT` checks the result.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimir_core import (MAX_LEN, MIN_LEN, RESIDUES, DataError, atomic_write, format_length_table,  # noqa: E402
                        length_distributions_match, log)
from mimir_eval import read_motifs  # noqa: E402

# --- reading protein FASTA files -------------------------------------------------------------

_NOT_FASTA_LETTER = re.compile("[^A-Z]")    # sequences may hold any IUPAC letter (X, B, Z, U, ...)


def read_fasta(path) -> list[tuple[str, str]]:
    """[(header without '>', uppercase sequence)] from a .fasta or .fasta.gz file.
    CRLF line ends and blank lines are fine; anything else odd is a DataError naming the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    records, header, header_line, chunks = [], None, 0, []

    def close_record():
        if header is not None:
            if not chunks:
                raise DataError(f"{path}, line {header_line}: record '{header}' has no sequence")
            records.append((header, "".join(chunks)))

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline=None) as f:   # newline=None folds CRLF to \n
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(">"):
                    close_record()
                    header, header_line, chunks = line[1:].strip(), lineno, []
                    if not header:
                        raise DataError(f"{path}, line {lineno}: empty header")
                    continue
                if header is None:
                    raise DataError(f"{path}, line {lineno}: sequence before the first '>' header")
                seq = line.upper()
                bad = _NOT_FASTA_LETTER.search(seq)
                if bad:
                    raise DataError(f"{path}, line {lineno}: '{bad.group()}' at column {bad.start() + 1} "
                                    f"is not a residue letter")
                chunks.append(seq)
            close_record()
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable FASTA file ({e})") from e
    if not records:
        raise DataError(f"{path}: no FASTA records")
    return records


def accession(header: str) -> str:
    """P12345 from a UniProt header 'sp|P12345|NAME_HUMAN ...'; otherwise the header's first word."""
    first = (header.split() or [""])[0]
    parts = first.split("|")
    return parts[1] if len(parts) >= 3 and parts[0] in ("sp", "tr") else first


def organism(header: str) -> str:
    """The OS= field of a UniProt header ('' when there is none)."""
    m = re.search(r"\bOS=(.*?)(?= [A-Z]{2}=|$)", header)
    return m.group(1).strip() if m else ""


def is_human(header: str) -> bool:
    return organism(header) == "Homo sapiens"


def is_viral(header: str) -> bool:
    return "virus" in organism(header).lower()      # "Dengue virus 3", "Human herpesvirus 8", ...


def write_gzip(path, data: bytes) -> None:
    """gzip with no file name and mtime 0 in its header, so equal data gives equal bytes; atomic."""
    def write(raw):
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), write)


def subset_fasta(src, dst, predicate) -> int:
    """Copy the records of `src` whose header satisfies `predicate` to the gzipped FASTA `dst`
    (headers kept, 60 residues a line). Returns how many were kept."""
    kept = [(h, s) for h, s in read_fasta(src) if predicate(h)]
    text = "".join(f">{h}\n" + "".join(s[i:i + 60] + "\n" for i in range(0, len(s), 60)) for h, s in kept)
    write_gzip(dst, text.encode())
    return len(kept)


# --- interacting peptides: measured pairs, or motif-derived stand-ins ---------------------------

MOTIF_WINDOW = (8, 15)      # motif-derived peptides are 8-15 residues, the bulk of measured SLiM peptides

def motif_peptides(proteins, motifs, rng, per_class_max: int = 150, windows_per_match: int = 3) -> list:
    """[(target, peptide, source accession)]: for each motif class, windows cut around its regex matches.

    Matches are visited in a random order; each gives a window of 8-15 residues (longer when the
    match is) that contains it, at a random offset. C-terminal classes end their window at the
    protein's last residue, and skip sequences UniProt marks '(Fragment)', whose last residue is not
    a real C-terminus. When a class has fewer matches than per_class_max, later rounds cut windows of
    other lengths from the same matches (up to windows_per_match each), as overlapping peptide
    libraries do. Windows with non-standard letters are skipped; peptides are unique within a class."""
    standard = set(RESIDUES)
    rows = []
    for m in motifs:
        pattern, c_term = re.compile(m["regex"]), m.get("anchor") == "c_terminal"
        hits = []                                        # (protein index, match start, match end)
        for p, (header, seq) in enumerate(proteins):
            if c_term:
                if "(Fragment)" in header:
                    continue
                hit = pattern.search(seq)
                if hit and hit.end() == len(seq):
                    hits.append((p, hit.start(), hit.end()))
            else:
                hits += [(p, h.start(), h.end()) for h in pattern.finditer(seq)]
        order, seen, made = rng.permutation(len(hits)), set(), 0
        for _ in range(windows_per_match):
            for k in order:
                if made >= per_class_max:
                    break
                p, start, end = hits[k]
                seq = proteins[p][1]
                length = min(max(int(rng.integers(MOTIF_WINDOW[0], MOTIF_WINDOW[1] + 1)), end - start), len(seq))
                if length < max(MIN_LEN, end - start) or length > MAX_LEN:
                    continue
                if c_term:
                    left = len(seq) - length
                else:                                    # any offset that keeps the whole match inside
                    left = int(rng.integers(max(0, end - length), min(start, len(seq) - length) + 1))
                pep = seq[left:left + length]
                if pep in seen or not set(pep) <= standard:
                    continue
                seen.add(pep)
                rows.append((m["target"], pep, accession(proteins[p][0])))
                made += 1
    return rows


def read_interactions(path) -> list:
    """[(target, peptide, source)] from a CSV with header target,sequence[,source]."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if header not in (["target", "sequence"], ["target", "sequence", "source"]):
            raise DataError(f"{path}, line 1: bad header {','.join(header) or '(empty)'}; "
                            f"expected target,sequence with an optional source column")
        for lineno, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}, line {lineno}: {len(row)} fields, expected {len(header)}")
            target, seq = row[0].strip(), row[1].strip().upper()
            if not target:
                raise DataError(f"{path}, line {lineno}: no target")
            if _NOT_FASTA_LETTER.search(seq) or not MIN_LEN <= len(seq) <= MAX_LEN:
                raise DataError(f"{path}, line {lineno}: '{seq}' is not a peptide of {MIN_LEN}-{MAX_LEN} letters")
            rows.append((target, seq, row[2].strip() if len(row) > 2 else ""))
    return rows


# --- background windows ----------------------------------------------------------------------

BACKGROUND_TRIES = 30       # random draws per row before it is filled by a scan of the cycle


def background_windows(proteins, n: int, length_probs, exclude, rng) -> tuple[list, int]:
    """([(window, source accession)] * n, windows skipped for non-residue letters).

    Each row first gets a length drawn from length_probs (over lengths 0..MAX_LEN), then a protein:
    row i goes to the (i mod P)-th protein of a shuffled cycle, so every protein supplies the same
    number of rows (+-1); a protein shorter than the row hands it to the next one in the cycle that is
    long enough. Within its protein a row takes a random window that has only standard residues
    (others are skipped and counted), is new, and is not in `exclude`. A row that finds no such
    window in BACKGROUND_TRIES draws (its protein is nearly used up) takes a free window found by
    scanning its protein, then the next ones in the cycle; a DataError says when none is left."""
    probs = np.asarray(length_probs, dtype=float)
    if probs.shape != (MAX_LEN + 1,) or (probs < 0).any() or probs.sum() <= 0 or probs[:MIN_LEN].any():
        raise DataError(f"length_probs must be {MAX_LEN + 1} non-negative weights with mass only on "
                        f"lengths {MIN_LEN}-{MAX_LEN}")
    if n <= 0:
        return [], 0
    if not proteins:
        raise DataError(f"no proteins to cut {n} background windows from")
    seqs = [s for _, s in proteins]
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    buf = np.frombuffer("".join(seqs).encode("ascii"), dtype=np.uint8)
    standard = np.zeros(256, dtype=bool)
    standard[np.frombuffer(RESIDUES.encode(), dtype=np.uint8)] = True

    # lengths first (so they follow length_probs exactly as drawn), then the round-robin owner
    lengths = rng.choice(MAX_LEN + 1, size=n, p=probs / probs.sum())
    cycle = rng.permutation(len(proteins))
    slot = np.arange(n) % len(cycle)
    owner_slot = np.empty(n, dtype=np.int64)          # position in the cycle of each row's protein
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        fits = np.flatnonzero(lens[cycle] >= length)
        if fits.size == 0:
            raise DataError(f"no protein is {length} residues long, so no background window of that length")
        owner_slot[rows] = fits[np.searchsorted(fits, slot[rows]) % fits.size]

    windows, sources = [None] * n, [None] * n
    taken, skipped = set(), 0
    pending = np.arange(n)
    for _ in range(BACKGROUND_TRIES):
        if pending.size == 0:
            break
        retry = []
        for length in np.unique(lengths[pending]):
            rows = pending[lengths[pending] == length]
            prot = cycle[owner_slot[rows]]
            starts = offsets[prot] + rng.integers(0, lens[prot] - length + 1)
            cut = buf[starts[:, None] + np.arange(length)]               # (rows, length) letters
            clean = standard[cut].all(axis=1)
            skipped += int((~clean).sum())
            words = cut.view(f"S{length}").ravel().astype(f"U{length}").tolist()
            for i, w, ok, p in zip(rows.tolist(), words, clean.tolist(), prot.tolist()):
                if ok and w not in taken and w not in exclude:
                    taken.add(w)
                    windows[i], sources[i] = w, p
                else:
                    retry.append(i)
        pending = np.array(sorted(retry), dtype=np.int64)

    # Rows still open: their protein is (nearly) used up. Scan the cycle onward for a free window.
    free, letters = {}, set(RESIDUES)                   # (protein, length) -> its windows, shuffled
    for i in pending.tolist():
        length = int(lengths[i])
        for step in range(len(cycle)):
            p = int(cycle[(owner_slot[i] + step) % len(cycle)])
            if lens[p] < length:
                continue
            if (p, length) not in free:
                seq = seqs[p]
                cand = [seq[j:j + length] for j in range(len(seq) - length + 1)]
                free[(p, length)] = [cand[j] for j in rng.permutation(len(cand))]
            pool = free[(p, length)]
            while pool and (pool[-1] in taken or pool[-1] in exclude or not set(pool[-1]) <= letters):
                pool.pop()
            if pool:
                w = pool.pop()
                taken.add(w)
                windows[i], sources[i] = w, p
                break
        else:
            raise DataError(f"the {len(proteins)} proteins cannot supply {n} unique background windows "
                            f"(ran out at length {length}); give more proteins or ask for fewer rows")
    names = [accession(h) for h, _ in proteins]
    return [(w, names[p]) for w, p in zip(windows, sources)], skipped


def length_histogram(sequences) -> np.ndarray:
    """Counts of sequences by length, over lengths 0..MAX_LEN."""
    counts = np.bincount([len(s) for s in sequences], minlength=MAX_LEN + 1)
    if counts.size > MAX_LEN + 1:
        raise DataError(f"a sequence is longer than {MAX_LEN}")
    return counts


# --- the builder -----------------------------------------------------------------------------


def build_dataset(out_path, human_fastas, viral_fastas, other_fastas=(), interactions_csv=None,
                  motifs_path=None, n_human: int = 500_000, n_viral: int = 500_000, seed: int = 0) -> dict:
    """Write the `label,target,sequence,source` CSV (gzipped when out_path ends in .gz) and return a
    summary. Label-1 rows: the interactions CSV, then motif-derived peptides from all the proteins.
    Background: n_human windows from the human files and the other (non-viral) files pooled, n_viral
    from the viral files, none equal to a label-1 peptide or to each other. Same inputs and seed,
    same bytes."""
    t0 = time.perf_counter()
    rng_motif, rng_human, rng_viral = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    human = [r for f in [*human_fastas, *other_fastas] for r in read_fasta(f)]
    viral = [r for f in viral_fastas for r in read_fasta(f)]

    positives = list(read_interactions(interactions_csv)) if interactions_csv else []
    if motifs_path:
        positives += motif_peptides(human + viral, read_motifs(motifs_path), rng_motif)
    unique, seen = [], set()
    for row in positives:                               # each (target, peptide) pair once; the first wins
        if row[:2] not in seen:
            seen.add(row[:2])
            unique.append(row)
    positives = unique
    if not positives:
        raise DataError("no interacting peptides: give an interactions CSV, a motifs JSON, or both")
    peptides = [s for _, s, _ in positives]
    length_counts = length_histogram(peptides)

    exclude = set(peptides)
    human_rows, human_skipped = background_windows(human, n_human, length_counts, exclude, rng_human)
    exclude |= {w for w, _ in human_rows}
    viral_rows, viral_skipped = background_windows(viral, n_viral, length_counts, exclude, rng_viral)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "target", "sequence", "source"])
    w.writerows((1, t, s, src) for t, s, src in positives)
    w.writerows((0, "", s, src) for s, src in human_rows + viral_rows)
    out_path = Path(out_path)
    if out_path.suffix == ".gz":
        write_gzip(out_path, buf.getvalue().encode())
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(buf.getvalue())

    per_target = {}
    for t, _, _ in positives:
        per_target[t] = per_target.get(t, 0) + 1
    background_counts = length_histogram([s for s, _ in human_rows + viral_rows])
    return {"out": str(out_path), "seed": seed, "n_interacting": len(positives), "per_target": per_target,
            "n_human": len(human_rows), "n_viral": len(viral_rows),
            "n_human_proteins": len(human), "n_viral_proteins": len(viral),
            "skipped_nonresidue": {"human": human_skipped, "viral": viral_skipped},
            "length_tv": length_distributions_match(background_counts, length_counts)[1],
            "length_table": format_length_table(background_counts, length_counts),
            "seconds": round(time.perf_counter() - t0, 2)}


# --- command line ----------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(prog="build_dataset.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--human", nargs="+", default=[], help="human protein FASTA file(s) (.gz ok)")
    p.add_argument("--viral", nargs="+", default=[], help="viral protein FASTA file(s)")
    p.add_argument("--other", nargs="+", default=[], help="more non-viral FASTA files, pooled with --human")
    p.add_argument("--interactions", default=None, help="CSV target,sequence[,source] of interacting peptides")
    p.add_argument("--motifs", default=None, help="motif classes JSON; their windows become label-1 rows")
    p.add_argument("--n-human", type=int, default=500_000, help="background windows from human (+other) proteins")
    p.add_argument("--n-viral", type=int, default=500_000, help="background windows from viral proteins")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output CSV (.csv or .csv.gz)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        s = build_dataset(args.out, args.human, args.viral, args.other, args.interactions, args.motifs,
                          args.n_human, args.n_viral, args.seed)
    except DataError as e:
        log(f"error: {e}")
        sys.exit(2)
    print(f"wrote {s['out']} in {s['seconds']} s: {s['n_interacting']} interacting peptides "
          f"({', '.join(f'{t} {n}' for t, n in s['per_target'].items())}), "
          f"{s['n_human']} human + {s['n_viral']} viral background windows "
          f"({s['skipped_nonresidue']['human'] + s['skipped_nonresidue']['viral']} windows with "
          f"non-residue letters skipped)")
    print(s["length_table"])


if __name__ == "__main__":
    main()
