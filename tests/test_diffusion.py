"""The D3PM math: transition matrices, the forward marginals, the posterior and the losses."""
import itertools

import pytest
import torch

import mimir_core as mc

K, T = 6, 10


@pytest.fixture
def d3pm():
    return mc.D3PM(K, T)


def test_rows_of_every_transition_sum_to_one(d3pm):
    assert torch.allclose(d3pm.Q.sum(-1), torch.ones(T + 1, K), atol=1e-6)
    assert torch.allclose(d3pm.Qbar.sum(-1), torch.ones(T + 1, K), atol=1e-6)
    assert (d3pm.Q >= 0).all() and (d3pm.betas > 0).all() and (d3pm.betas <= 1).all()


def test_qbar_is_the_product_of_the_one_step_matrices(d3pm):
    prod = torch.eye(K)
    for t in range(1, T + 1):
        prod = prod @ d3pm.Q[t]
        assert torch.allclose(d3pm.Qbar[t], prod, atol=1e-5)


def test_cosine_schedule_noise_increases_and_ends_uniform(d3pm):
    keep = torch.diagonal(d3pm.Qbar, dim1=1, dim2=2)[:, 0]        # P(x_t = x0)
    assert (keep[1:] < keep[:-1]).all()
    x0r = torch.arange(K)[None]
    q_T = d3pm.q_probs(x0r, torch.tensor([T]))
    assert torch.allclose(q_T, torch.full_like(q_T, 1 / K), atol=1e-4)


def test_posterior_equals_brute_force_bayes(d3pm):
    for t, x0, xt in itertools.product(range(1, T + 1), range(K), range(K)):
        # q(x_{t-1} = j | x_t, x0) = q(x_t | j) q(j | x0) / sum_j' ...
        joint = torch.tensor([d3pm.Q[t][j, xt] * d3pm.Qbar[t - 1][x0, j] for j in range(K)])
        expected = joint / joint.sum()
        got = d3pm.posterior(torch.tensor([[xt]]), torch.tensor([t]), torch.nn.functional.one_hot(
            torch.tensor([[x0]]), K).float())[0, 0]
        assert torch.allclose(got, expected, atol=1e-5), (t, x0, xt)


def test_predicted_posterior_is_the_mixture_of_true_posteriors(d3pm):
    """p(x_{t-1} | x_t) = sum_x0 q(x_{t-1} | x_t, x0) p(x0 | x_t), each term by brute-force Bayes."""
    torch.manual_seed(0)
    p0 = torch.softmax(torch.randn(1, 1, K), -1)
    for t, xt in itertools.product(range(1, T + 1), range(K)):
        expected = torch.zeros(K)
        for x0 in range(K):
            joint = torch.tensor([d3pm.Q[t][j, xt] * d3pm.Qbar[t - 1][x0, j] for j in range(K)])
            expected += p0[0, 0, x0] * joint / joint.sum()
        got = d3pm.posterior(torch.tensor([[xt]]), torch.tensor([t]), p0)[0, 0]
        assert torch.allclose(got, expected, atol=1e-5), (t, xt)


def test_the_bound_is_tight_for_the_exact_posterior_of_iid_residues(d3pm):
    """Residues drawn i.i.d. from c: the exact x0 posterior, p(x0 | x_t) ∝ c(x0) q(x_t | x0), makes every
    reverse step exact, so the expected bound (the prior term plus every KL term, summed exactly over
    x0 and x_t) equals the entropy of c. A reverse step that counted q(x_t | x0) twice would exceed it."""
    c = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.04, 0.01])
    x0r = torch.arange(K).repeat_interleave(K)[None]                   # every (x0, x_t) pair: (1, K * K)
    xtr = torch.arange(K).repeat(K)[None]
    qT = d3pm.Qbar[T]
    bound = (c[:, None] * torch.special.xlogy(qT, qT * K)).sum()       # KL(q(x_T | x0) || uniform)
    for t in range(1, T + 1):
        logits = (c.log()[:, None] + d3pm.Qbar[t][:, xtr[0]].log()).T[None]     # (1, K * K, K)
        _, vb = d3pm.ce_and_vb(logits, x0r, xtr, torch.tensor([t]))
        bound += (c[x0r] * d3pm.Qbar[t][x0r, xtr] * vb).sum()
    entropy = -(c * c.log()).sum()
    assert bound.item() == pytest.approx(entropy.item(), rel=1e-4)


def test_vb_is_zero_when_x0_prediction_is_the_truth(d3pm):
    torch.manual_seed(0)
    x0r = torch.randint(0, K, (8, 12))
    t = torch.randint(1, T + 1, (8,))
    _, xtr = d3pm.q_sample(x0r + 1, t)
    perfect_logits = torch.nn.functional.one_hot(x0r, K).float() * 50.0
    ce, vb = d3pm.ce_and_vb(perfect_logits, x0r, xtr, t)
    assert vb.abs().max() < 1e-4 and ce.max() < 1e-4
    wrong_logits = torch.zeros(8, 12, K)
    _, vb_wrong = d3pm.ce_and_vb(wrong_logits, x0r, xtr, t)
    assert vb_wrong.mean() > 0.01


def test_pad_never_changes_under_noising(d3pm):
    torch.manual_seed(0)
    x0 = torch.randint(1, K + 1, (64, mc.MAX_LEN))
    lengths = torch.randint(mc.MIN_LEN, mc.MAX_LEN + 1, (64,))
    x0[torch.arange(mc.MAX_LEN)[None] >= lengths[:, None]] = mc.PAD
    for t in range(1, T + 1):
        xt, _ = d3pm.q_sample(x0, torch.full((64,), t))
        assert torch.equal(xt == mc.PAD, x0 == mc.PAD)
    # at t = T residues are fully mixed: about 1/K of them keep their letter
    xt, _ = d3pm.q_sample(x0, torch.full((64,), T))
    same = ((xt == x0) & (x0 != mc.PAD)).sum() / (x0 != mc.PAD).sum()
    assert abs(same.item() - 1 / K) < 0.05


def test_losses_ignore_pad_positions(d3pm):
    """Changing what the model predicts at PAD positions must not change ce or vb."""
    torch.manual_seed(0)
    x0 = torch.randint(1, K + 1, (4, mc.MAX_LEN))
    x0[:, 10:] = mc.PAD

    class Fixed(torch.nn.Module):
        def __init__(self, pad_value):
            super().__init__()
            self.pad_value = pad_value

        def forward(self, xt, t, label, target):
            logits = torch.zeros(xt.shape[0], xt.shape[1], K)
            logits[:, 10:] = self.pad_value
            return logits

    args = (x0, torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    a = d3pm.losses(Fixed(0.0), *args, generator=torch.Generator().manual_seed(1))
    b = d3pm.losses(Fixed(torch.randn(K) * 9), *args, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert abs(a[0].item() - torch.log(torch.tensor(float(K))).item()) < 1e-5   # uniform guess: ce = ln K


def test_true_posterior_is_the_one_hot_posterior(d3pm):
    torch.manual_seed(0)
    x0r, xtr = torch.randint(0, K, (5, 7)), torch.randint(0, K, (5, 7))
    t = torch.randint(1, T + 1, (5,))
    one_hot = torch.nn.functional.one_hot(x0r, K).float()
    assert torch.allclose(d3pm.true_posterior(xtr, t, x0r), d3pm.posterior(xtr, t, one_hot), atol=1e-6)
