"""The x0-transformer: the CPU path that skips PAD rows computes exactly what the padded path does."""
import torch

import mimir_core as mc


def batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    xt = torch.randint(1, 21, (n, mc.MAX_LEN), generator=g)
    lengths = torch.randint(mc.MIN_LEN, mc.MAX_LEN + 1, (n,), generator=g)
    xt[torch.arange(mc.MAX_LEN)[None] >= lengths[:, None]] = mc.PAD
    return xt, torch.randint(1, 11, (n,), generator=g), torch.randint(0, 3, (n,), generator=g), \
        torch.randint(0, 4, (n,), generator=g)


def test_packed_and_padded_paths_agree_in_values_and_gradients():
    vocab = mc.Vocab(mc.RESIDUES, ["T1", "T2", "T3"])
    model = mc.build_model(mc.make_config("tiny"), vocab, "cpu")
    xt, t, label, target = batch()
    residues = (xt != mc.PAD)[..., None]
    out, grads = {}, {}
    for packed in (True, False):
        model.pack_residues = packed
        model.zero_grad()
        logits = model(xt, t, label, target)
        (logits * residues).square().sum().backward()
        out[packed] = logits
        grads[packed] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert torch.allclose(out[True] * residues, out[False] * residues, atol=1e-5)
    assert (out[True] * ~residues).abs().max() == 0                     # PAD rows are never computed
    assert (out[False] * ~residues).abs().max() > 0                      # (the padded path does compute them)
    assert all(torch.allclose(grads[True][n], grads[False][n], atol=1e-5) for n in grads[True])


def test_the_cpu_packs_and_a_model_can_be_told_not_to(monkeypatch):
    seen = []
    original = mc.Residues.__init__

    def spy(self, pad_mask, packed):
        seen.append(packed)
        original(self, pad_mask, packed)
    monkeypatch.setattr(mc.Residues, "__init__", spy)
    model = mc.build_model(mc.make_config("tiny"), mc.Vocab(mc.RESIDUES, ["T1", "T2", "T3"]), "cpu")
    model(*batch(n=2))
    model.pack_residues = False
    model(*batch(n=2))
    assert seen == [True, False]
