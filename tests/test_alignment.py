"""The nearest-neighbour baseline's similarity: BLOSUM62 Smith-Waterman with affine gaps."""
import numpy as np
import pytest

import mimir_core as al


def slow_smith_waterman(a, b, go=al.GAP_OPEN, ge=al.GAP_EXTEND):
    """Textbook Gotoh recursion, one cell at a time: the best local score."""
    n, m, NEG = len(a), len(b), -10**9
    H = [[0] * (m + 1) for _ in range(n + 1)]
    E = [[NEG] * (m + 1) for _ in range(n + 1)]
    F = [[NEG] * (m + 1) for _ in range(n + 1)]
    best = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            E[i][j] = max(H[i - 1][j] + go, E[i - 1][j] + ge)
            F[i][j] = max(H[i][j - 1] + go, F[i][j - 1] + ge)
            H[i][j] = max(0, H[i - 1][j - 1] + al.blosum62(a[i - 1], b[j - 1]), E[i][j], F[i][j])
            best = max(best, H[i][j])
    return best


def test_blosum62_entries():
    assert al.blosum62("A", "A") == 4 and al.blosum62("W", "W") == 11 and al.blosum62("C", "C") == 9
    assert al.blosum62("I", "L") == 2 and al.blosum62("W", "G") == -2 and al.blosum62("D", "E") == 2
    assert (al.BLOSUM62[:23, :23] == al.BLOSUM62[:23, :23].T).all()


def test_hand_computed_scores():
    # identical: the sum of the diagonal; A4 C9 D6
    assert al.local_alignment_scores(["ACD"], ["ACD"])[0, 0] == 19
    # a shared core inside overhangs: WW (11 + 11) aligned, the rest scores below zero
    assert al.local_alignment_scores(["GWWG"], ["PWWP"])[0, 0] == 22
    # a conservative substitution: I/L scores 2 -> KLK vs KIK = 5 + 2 + 5
    assert al.local_alignment_scores(["KLK"], ["KIK"])[0, 0] == 12
    # nothing positive: 0
    assert al.local_alignment_scores(["W"], ["G"])[0, 0] == 0
    # a gap of one: WWWWW-WWWWW vs WWWWWGWWWWW... here query lacks G: 10 * 11 - 10 = 100 > 5 * 11
    assert al.local_alignment_scores(["WWWWWWWWWW"], ["WWWWWGWWWWW"])[0, 0] == 100


def test_identity_of_a_peptide_to_itself_is_one():
    peps = ["ACDEFGHIKL", "PPGY", "KRKRKRKRKRKRKRKRKRKR"]
    assert np.allclose(al.best_identity(peps, peps), 1.0)
    assert al.best_identity(["PPGY"], ["AAPPGYAA"])[0] == 1.0      # occurs verbatim inside
    assert al.best_identity(["PPGYAAAA"], ["PPGY"])[0] == 0.5       # half of the query is copied
    assert al.best_identity(["KLK"], ["KIK"])[0] == pytest.approx(2 / 3)


def test_vectorized_equals_slow_reference():
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    mk = lambda: "".join(rng.choice(letters[:rng.integers(3, 21)], size=rng.integers(1, 21)))
    qs, rs = [mk() for _ in range(25)], [mk() for _ in range(20)]
    fast = al.local_alignment_scores(qs, rs, chunk=97)          # odd chunk: chunking changes nothing
    slow = np.array([[slow_smith_waterman(q, r) for r in rs] for q in qs])
    assert (fast == slow).all()


def test_nearest_neighbour_scores():
    refs = ["PPGYAA", "KRKRK"]
    raw = al.nearest_neighbour_scores(["PPGY", "WWWW"], refs)
    assert raw[0] > raw[1]
    norm = al.nearest_neighbour_scores(["PPGYAA", "WWWW"], refs, normalize=True)
    assert norm[0] == pytest.approx(1.0) and 0 <= norm[1] < 1
    assert al.nearest_neighbour_scores(["PPGY"], []).tolist() == [0.0]
    assert al.local_alignment_scores([], refs).shape == (0, 2)
