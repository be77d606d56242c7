"""Generation: validity, length control, seeds, diversity, conditioning and errors."""
import pytest
import torch

import mimir_colab as colab
import mimir_core as mc


@pytest.fixture(scope="module")
def run(trained_run):
    return mc.load_run(trained_run)


def test_every_output_is_a_valid_peptide_in_the_requested_range(run):
    peptides = mc.generate(run, n=200, label=1, target="P11111", min_length=8, max_length=12, seed=0)
    assert len(peptides) == 200
    assert all(8 <= len(p) <= 12 and set(p) <= set(mc.RESIDUES) for p in peptides)
    lengths = {len(p) for p in peptides}
    assert len(lengths) >= 3                            # lengths follow a distribution, not one value


def test_lengths_outside_the_training_range_still_work(run):
    peptides = mc.generate(run, n=50, label=0, min_length=19, max_length=20, seed=1)
    assert all(19 <= len(p) <= 20 for p in peptides)


def test_default_lengths_follow_the_training_distribution(run):
    peptides = mc.generate(run, n=300, label=0, seed=2)
    lengths = [len(p) for p in peptides]
    assert min(lengths) >= 5 and max(lengths) <= 15     # the fixture's background lengths are 5-15


def test_seeds_reproduce_and_differ_and_outputs_are_diverse(run):
    a = mc.generate(run, n=100, label=1, seed=0)
    b = mc.generate(run, n=100, label=1, seed=0)
    c = mc.generate(run, n=100, label=1, seed=1)
    assert a == b and a != c
    assert len(set(a)) >= 95


def test_target_conditioning_writes_the_targets_motif(run):
    """Each fixture target carries a fixed motif: conditioning on the target (default guidance) must write
    pieces of it far more often than background conditioning does (measured on a tiny, briefly trained
    model: about 10% vs 0%)."""
    from conftest import FIXTURE_MOTIFS
    on_rates, bg_rates = [], []
    background = mc.generate(run, n=300, label=0, seed=0)
    for target, motif in FIXTURE_MOTIFS.items():
        kmers = {motif[i:i + 3] for i in range(len(motif) - 2)}
        rate = lambda ps: sum(any(k in p for k in kmers) for p in ps) / len(ps)
        on_rates.append(rate(mc.generate(run, n=300, label=1, target=target, seed=0)))
        bg_rates.append(rate(background))
    assert sum(on_rates) / 3 > 0.05 and sum(on_rates) / 3 > 4 * sum(bg_rates) / 3 + 0.02, (on_rates, bg_rates)


def test_guidance_zero_is_plain_conditional_sampling(run):
    lengths = [10] * 16
    g = lambda: torch.Generator(device=run.device).manual_seed(3)
    plain = mc.sample_tokens(run, lengths, 1, 2, guidance=0.0, generator=g())
    again = mc.sample_tokens(run, lengths, 1, 2, guidance=0.0, generator=g())
    guided = mc.sample_tokens(run, lengths, 1, 2, guidance=2.0, generator=g())
    assert torch.equal(plain, again) and not torch.equal(plain, guided)


def test_bad_requests_get_clear_errors(run):
    with pytest.raises(mc.DataError, match=r"unknown target 'P1111'.*close matches: P11111"):
        mc.generate(run, n=5, target="P1111")
    with pytest.raises(mc.DataError, match="a target goes with label 1"):
        mc.generate(run, n=5, label=0, target="P11111")
    with pytest.raises(mc.DataError, match="length range 12-8"):
        mc.generate(run, n=5, min_length=12, max_length=8)
    with pytest.raises(mc.DataError, match="length range 2-8"):
        mc.generate(run, n=5, min_length=2, max_length=8)


def test_sample_table_shows_each_condition_side_by_side(run):
    table = colab.sample_table(run, target="P11111", n=5, min_length=8, max_length=12, guidance=0.0).splitlines()
    assert table[0].split("  ")[0].strip() == "interacting, any target" and "interacting with P11111" in table[0]
    assert len(table) == 2 + 5
    for line in table[2:]:
        peptides = line.split()
        assert len(peptides) == 3 and all(8 <= len(p) <= 12 and set(p) <= set(mc.RESIDUES) for p in peptides)
    assert len(colab.sample_table(run, n=3).splitlines()[2].split()) == 2     # no target: two columns
