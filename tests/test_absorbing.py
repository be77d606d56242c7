"""Absorbing-state (masked) noise: the forward process, the posterior and the bound checked by brute force, and
a run trained with it generating, scoring and reloading like a uniform one."""
import itertools

import pytest
import torch

import mimir_core as mc
from conftest import write_fixture

K, T = 6, 10
MASK = K                                    # the MASK state's index (its token is K + 1)


@pytest.fixture
def d3pm():
    return mc.D3PM(K, T, noise="absorbing")


def test_a_residue_only_ever_turns_into_mask_and_stays_there(d3pm):
    assert d3pm.S == K + 1 and d3pm.Q.shape == (T + 1, K + 1, K + 1)
    assert torch.allclose(d3pm.Q.sum(-1), torch.ones(T + 1, K + 1), atol=1e-6)
    off = ~torch.eye(K + 1, dtype=torch.bool)
    off[:, MASK] = False
    assert (d3pm.Q[:, off] == 0).all() and (d3pm.Qbar[:, off] == 0).all()     # no letter becomes another
    assert (d3pm.Q[:, MASK, MASK] == 1).all()
    keep = torch.diagonal(d3pm.Qbar, dim1=1, dim2=2)[:, :K]
    assert (keep[1:] < keep[:-1]).all()
    assert torch.allclose(d3pm.q_probs(torch.arange(K)[None], torch.tensor([T]))[..., MASK], torch.ones(1, K),
                          atol=1e-6)
    assert torch.equal(d3pm.prior_sample(3, 5), torch.full((3, 5), MASK))


def test_noised_residues_are_x0_or_mask_and_pad_stays_pad(d3pm):
    torch.manual_seed(0)
    x0 = torch.randint(1, K + 1, (64, 12))
    x0[:, 9:] = mc.PAD
    for t in range(1, T + 1):
        xt, xtr = d3pm.q_sample(x0, torch.full((64,), t))
        assert torch.equal(xt == mc.PAD, x0 == mc.PAD)
        real = x0 != mc.PAD
        assert ((xt[real] == x0[real]) | (xt[real] == MASK + 1)).all()


def test_posterior_equals_brute_force_bayes_on_every_reachable_pair(d3pm):
    torch.manual_seed(0)
    p0 = torch.softmax(torch.randn(1, 1, K), -1)
    for t, x0, xt in itertools.product(range(1, T + 1), range(K), (*range(K), MASK)):
        if d3pm.Qbar[t][x0, xt] == 0:
            continue                                    # x_t cannot come from this x0
        joint = torch.tensor([d3pm.Q[t][j, xt] * d3pm.Qbar[t - 1][x0, j] for j in range(K + 1)])
        got = d3pm.posterior(torch.tensor([[xt]]), torch.tensor([t]), torch.nn.functional.one_hot(
            torch.tensor([[x0]]), K).float())[0, 0]
        assert torch.allclose(got, joint / joint.sum(), atol=1e-5), (t, x0, xt)
    for t in range(1, T + 1):
        # an unmasked x_t is x0 itself, whatever the model says (x_T is always MASK); a masked one mixes the
        # true posteriors by p0
        if t < T:
            unmasked = d3pm.posterior(torch.tensor([[2]]), torch.tensor([t]), p0)[0, 0]
            assert torch.allclose(unmasked, torch.nn.functional.one_hot(torch.tensor(2), K + 1).float(), atol=1e-6)
        expected = torch.zeros(K + 1)
        for x0 in range(K):
            joint = torch.tensor([d3pm.Q[t][j, MASK] * d3pm.Qbar[t - 1][x0, j] for j in range(K + 1)])
            expected += p0[0, 0, x0] * d3pm.Qbar[t][x0, MASK] * joint / joint.sum()
        got = d3pm.posterior(torch.tensor([[MASK]]), torch.tensor([t]), p0)[0, 0]
        assert torch.allclose(got, expected / expected.sum(), atol=1e-5), t


def test_the_bound_is_tight_for_the_exact_posterior_of_iid_residues(d3pm):
    """As for uniform noise (test_diffusion): with the exact x0 posterior every reverse step is exact, so
    the expected bound over every reachable (x0, x_t) equals the entropy of c; the prior term is 0 (x_T is
    MASK whatever x0 was)."""
    c = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.04, 0.01])
    pairs = [(a, b) for a in range(K) for b in (a, MASK)]
    x0r, xtr = torch.tensor([[a for a, _ in pairs]]), torch.tensor([[b for _, b in pairs]])
    bound = torch.tensor(0.0)
    for t in range(1, T + 1):
        likelihood = d3pm.Qbar[t][:K, xtr[0]]                                   # (K, pairs)
        logits = (c.log()[:, None] + likelihood.clamp_min(1e-30).log()).T[None]
        _, vb = d3pm.ce_and_vb(logits, x0r, xtr, torch.tensor([t]))
        bound += (c[x0r] * d3pm.Qbar[t][x0r, xtr] * vb).sum()
    x0 = torch.arange(1, K + 1)[:, None]
    prior = torch.special.xlogy(d3pm.q_probs(x0 - 1, torch.full((K,), T)), d3pm.q_probs(x0 - 1, torch.full((K,), T)))
    assert prior.sum().item() == pytest.approx(0.0, abs=1e-6)
    assert bound.item() == pytest.approx(-(c * c.log()).sum().item(), rel=1e-4)


def test_a_setting_other_than_the_two_noises_is_refused():
    with pytest.raises(mc.DataError, match="noise.*uniform, absorbing"):
        mc.make_config("tiny", noise="gaussian")


@pytest.fixture(scope="module")
def absorbing_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("absorbing")
    cfg = mc.make_config("tiny", data=str(write_fixture(tmp / "data.csv")), epochs=6, noise="absorbing")
    mc.train(cfg, tmp / "run", progress=False)
    return tmp / "run"


def test_an_absorbing_run_learns_its_targets_and_reloads_with_its_noise(absorbing_run):
    run = mc.load_run(absorbing_run)
    assert run.cfg.noise == "absorbing" and run.diffusion.S == len(run.vocab.letters) + 1
    peptides = mc.generate(run, 200, target="P11111", seed=0, guidance=0)
    assert all(set(p) <= set(mc.RESIDUES) and mc.MIN_LEN <= len(p) <= mc.MAX_LEN for p in peptides)
    others = mc.generate(run, 200, target="O33333", seed=0, guidance=0)
    rate = lambda ps, motif: sum(motif in p for p in ps) / len(ps)
    assert rate(peptides, "PPLP") > 2 * rate(others, "PPLP") + 0.05          # the condition is read
    assert mc.generate_variants(run, "ACDEFGHIK", 5, strength=0) == ["ACDEFGHIK"] * 5
    assert all(p[2:4] == "PP" for p in mc.fill_template(run, "xxPPxYxx", 5))
    scores = mc.score(run, ["AAPPLPAA", "AAGGWWAA"], target="P11111")
    assert scores[0]["score"] > scores[1]["score"]


def test_the_command_line_trains_with_absorbing_noise(tmp_path, capsys):
    data = write_fixture(tmp_path / "data.csv", n_background=300, n_per_target=40)
    mc.main(["train", "--preset", "tiny", "--data", str(data), "--run-name", "m", "--checkpoint-dir",
             str(tmp_path), "--noise", "absorbing", "--max-steps", "5", "--no-progress"])
    assert mc.load_run(tmp_path / "m").cfg.noise == "absorbing"
    with pytest.raises(SystemExit) as e:
        mc.main(["train", "--preset", "tiny", "--data", str(data), "--run-name", "n", "--checkpoint-dir",
                 str(tmp_path), "--noise", "gaussian"])
    assert e.value.code == 2 and "invalid choice: 'gaussian'" in capsys.readouterr().err
