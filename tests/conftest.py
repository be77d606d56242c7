"""Shared fixtures: small synthetic datasets written to a temporary folder."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))        # the tools: build_dataset, benchmark

import mimir_core as mc  # noqa: E402

# Each fixture target writes a recognisable motif, so conditioning can be checked.
FIXTURE_MOTIFS = {"P11111": "PPLP", "Q22222": "RSWSKP", "O33333": "GGWW"}


def write_fixture(path, n_background=2000, n_per_target=150, seed=0, with_source=True):
    """A valid dataset: background peptides with a skewed composition, and per target peptides
    that carry its motif at a random position. Returns the path."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(mc.RESIDUES))
    comp = rng.dirichlet(np.ones(20) * 2)
    lines = ["label,target,sequence" + (",source" if with_source else "")]
    seen = set()

    def peptide(length, motif=""):
        body = "".join(rng.choice(letters, size=length - len(motif), p=comp))
        cut = rng.integers(0, len(body) + 1)
        return body[:cut] + motif + body[cut:]

    for target, motif in FIXTURE_MOTIFS.items():
        made = 0
        while made < n_per_target:
            seq = peptide(int(rng.integers(8, 13)), motif)
            if seq in seen:
                continue
            seen.add(seq)
            lines.append(f"1,{target},{seq}" + (f",prot{made % 40}" if with_source else ""))
            made += 1
    made = 0
    while made < n_background:
        seq = peptide(int(rng.integers(5, 16)))
        if seq in seen:
            continue
        seen.add(seq)
        lines.append(f"0,,{seq}" + (f",prot{made % 200}" if with_source else ""))
        made += 1
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


@pytest.fixture
def fixture_csv(tmp_path):
    return write_fixture(tmp_path / "data.csv")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny model trained on the fixture, shared by the sampling and evaluation tests."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = mc.make_config("tiny", data=str(write_fixture(tmp / "data.csv")), epochs=8)
    mc.train(cfg, tmp / "run", progress=False)
    return tmp / "run"
