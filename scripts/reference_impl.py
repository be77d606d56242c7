"""A straightforward implementation of Mimir's model, training step and sampler, which scripts/benchmark.py
times in turns with Mimir's in the same run.

It is what one writes first with PyTorch's usual pieces:
- data: a per-sample Dataset whose __getitem__ encodes one peptide string into a padded tensor, read by a
  DataLoader (batch 256, shuffled, default collation, in the main process);
- model: a pre-norm transformer over the padded batch (every PAD position computed), nn.MultiheadAttention
  with a key_padding_mask for PAD, learned absolute positions from the N-terminus;
- step: the D3PM loss, backward, gradient clipping, torch.optim.AdamW at its defaults (on the CPU a loop
  over the parameter tensors), and the loss read with .item() every step;
- sampler: reverse diffusion over the padded grid, one torch.multinomial draw per position and step.

It is Mimir's plain model (make_config(..., rotary=False, termini=False)): the same sizes (dim, layers,
heads, MLP 4x, LayerNorms, step MLP, label and target embeddings, a head over the residue letters), the
same parameters under nn.MultiheadAttention's names (reference_weights), and on the same batch and noise
the same loss and gradients (tests/test_benchmark.py). Mimir's shipped model adds rotary attention and a
C-terminal embedding, which a straightforward implementation has no reason to have; the benchmark times
the shipped step against this one, which can only make Mimir look slower than its plain model would.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimir_core import MAX_LEN, PAD, RESIDUES, UNKNOWN_TARGET, D3PM, autocast, drop_condition  # noqa: E402

BATCH = 256


# --- data: one peptide per __getitem__, batched by the DataLoader's default collation --------------

class PeptideDataset(Dataset):
    """(tokens (MAX_LEN,) PAD-filled, label, target id) of row i, encoded when it is asked for, with
    Mimir's vocabulary (token of letters[j] is j + 1, PAD is 0; target id 0 is none)."""

    def __init__(self, rows, vocab):
        self.sequences, self.labels, self.targets = rows.sequences, rows.labels, rows.targets
        self.token = {letter: j + 1 for j, letter in enumerate(vocab.letters)}
        self.target_id = {target: j + 1 for j, target in enumerate(vocab.targets)}

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, i):
        seq = self.sequences[i]
        tokens = torch.full((MAX_LEN,), PAD, dtype=torch.long)
        tokens[:len(seq)] = torch.tensor([self.token[c] for c in seq])
        return tokens, int(self.labels[i]), self.target_id.get(self.targets[i], UNKNOWN_TARGET)


def endless_batches(dataset, device, batch_size: int = BATCH):
    """Shuffled batches on the device, epoch after epoch."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    while True:
        for x0, label, target_id in loader:
            yield x0.to(device), label.to(device), target_id.to(device)


# --- the model --------------------------------------------------------------------------------------

def step_embedding(t, dim: int):
    """Sinusoidal embedding of the diffusion steps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x, pad):
        h = self.ln1(x)
        # need_weights=False: nothing reads the attention map, and without it attention runs as one
        # scaled_dot_product_attention call instead of an explicit softmax over (B, H, L, L)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ReferenceModel(nn.Module):
    """Logits of x0 (B, L, K) from (x_t, step, label, target): token + position + condition (step MLP +
    label + target) embeddings, pre-norm blocks, a final LayerNorm and a head over the residue letters."""

    def __init__(self, cfg, vocab_size: int, num_targets: int):
        super().__init__()
        self.dim = cfg.dim
        self.tok_emb = nn.Embedding(vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(MAX_LEN, cfg.dim)
        self.label_emb = nn.Embedding(3, cfg.dim)                   # background, interacting, unknown
        self.target_emb = nn.Embedding(num_targets, cfg.dim)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, vocab_size - 1)              # PAD is never predicted

    def forward(self, xt, t, label, target_id):
        pad = xt == PAD                                             # key_padding_mask: True = ignore
        pos = torch.arange(xt.shape[1], device=xt.device)
        cond = self.time_mlp(step_embedding(t, self.dim)) + self.label_emb(label) + self.target_emb(target_id)
        h = self.tok_emb(xt) + self.pos_emb(pos)[None] + cond[:, None, :]
        for block in self.blocks:
            h = block(h, pad)
        return self.head(self.ln_f(h))


def reference_weights(mimir_state: dict) -> dict:
    """A state_dict of Mimir's X0Transformer under the reference's names. Mimir's attention holds the same
    tensors as nn.MultiheadAttention: qkv is in_proj (queries, keys, values in that order, each head's
    features side by side) and proj is out_proj. Mimir's C-terminal embedding has no place here and is
    left out, as are the rotary tables (not in a state_dict): what remains is the plain model's weights."""
    renamed = {}
    for name, tensor in mimir_state.items():
        if not name.startswith("cterm_emb."):
            renamed[name.replace(".attn.qkv.", ".attn.in_proj_").replace(".attn.proj.", ".attn.out_proj.")] = tensor
    return renamed


def reference_model(cfg, vocab, mimir_state: dict, device) -> ReferenceModel:
    """The reference model holding Mimir's weights (a state_dict of X0Transformer)."""
    model = ReferenceModel(cfg, vocab.size, vocab.num_targets)
    model.load_state_dict(reference_weights(mimir_state))
    return model.to(device)


# --- training and sampling --------------------------------------------------------------------------

class ReferenceTrainer:
    """A training step as a plain loop writes it: next batch, loss, backward, clip, AdamW, .item()."""

    def __init__(self, cfg, vocab, dataset, device, mimir_state: dict):
        self.cfg, self.device = cfg, torch.device(device)
        self.model = reference_model(cfg, vocab, mimir_state, self.device).train()
        self.diffusion = D3PM(len(vocab.letters), cfg.n_steps, self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.batches = endless_batches(dataset, self.device)

    def loss(self, x0, label, target_id, generator=None):
        """Mimir's loss, ce + hybrid_coeff * vb (D3PM.losses), with `generator` drawing the noise. Written as
        the formula reads, as D3PM code usually is: with a coefficient of 0 vb still runs its backward."""
        ce, vb = self.diffusion.losses(self.model, x0, label, target_id, generator=generator,
                                       precision=self.cfg.precision)
        return ce + self.cfg.hybrid_coeff * vb

    def step(self) -> float:
        x0, label, target_id = next(self.batches)
        label, target_id = drop_condition(label, target_id, self.cfg.cond_drop, self.cfg.label1_repeat)
        loss = self.loss(x0, label, target_id)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss.item()


@torch.no_grad()
def reference_sample(model, diffusion: D3PM, vocab, lengths, label: int, target_id: int, generator=None):
    """Reverse diffusion over the padded (n, MAX_LEN) grid from uniform noise: at each step the model's x0
    probabilities (non-standard letters blocked), D3PM's posterior, one multinomial draw per position."""
    device = next(model.parameters()).device
    n, K = len(lengths), diffusion.K
    residue = torch.arange(MAX_LEN, device=device)[None] < torch.as_tensor(lengths, device=device)[:, None]
    blocked = torch.tensor([c not in RESIDUES for c in vocab.letters], device=device)
    labels, targets = torch.full((n,), label, device=device), torch.full((n,), target_id, device=device)
    xtr = torch.randint(0, K, (n, MAX_LEN), device=device, generator=generator)
    for t in range(diffusion.T, 0, -1):
        steps = torch.full((n,), t, device=device)
        with autocast(device):
            logits = model(torch.where(residue, xtr + 1, PAD), steps, labels, targets)
        p0 = logits.float().masked_fill(blocked, -math.inf).softmax(-1)
        posterior = diffusion.posterior(xtr, steps, p0)
        xtr = torch.multinomial(posterior.flatten(0, 1), 1, generator=generator).view(n, MAX_LEN)
    return torch.where(residue, xtr + 1, PAD).cpu()
