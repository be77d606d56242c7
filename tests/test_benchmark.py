"""scripts/benchmark.py: one tiny run through the command line, its table, and the sync counter; the
reference it times Mimir against computes Mimir's loss."""
import contextlib
import io
import re

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import benchmark as bench
import mimir_core as mc
import reference_impl as ref
from conftest import write_fixture


def parse_table(markdown: str) -> tuple[list, dict]:
    """(header cells, {measure: [its other cells]}) of the first Markdown table in the text."""
    lines = []
    for ln in markdown.splitlines():
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            break
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert set(lines[1]) <= set("|-"), "second line must be the separator"
    return cells[0], {row[0]: row[1:] for row in cells[2:]}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """`python scripts/benchmark.py` with tiny settings: (printed text, the file it wrote)."""
    out = tmp_path_factory.mktemp("bench") / "table.md"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench.main(["--device", "cpu", "--presets", "tiny,small", "--rows", "5000", "--out", str(out)])
    return printed.getvalue(), out.read_text()


def test_defaults_follow_the_spec():
    args = bench.build_parser().parse_args([])
    assert (args.device, args.presets, args.rows, args.full) == ("auto", "small,medium,large", 1_000_000, False)


def test_prints_and_writes_the_same_table_with_every_row(result):
    printed, written = result
    assert printed.strip() == written.strip()
    header, rows = parse_table(written)
    assert header == ["measure", "this machine", "reference", "speed-up"]
    assert all(len(cells) == 3 for cells in rows.values())
    for name in ("tiny", "small"):
        for what in ("the same step computing PAD rows (as on a GPU)", "samples/s; epoch of 1,000,000 rows",
                     "FLOPs per step (executed; padded)", "achieved FLOP/s",
                     "operators per step", "host syncs per step", "peak memory",
                     "the same step without rotary attention and C-terminal embedding"):
            assert f"{name}: {what}" in rows
        plain = rows[f"{name}: the same step without rotary attention and C-terminal embedding"]
        assert re.fullmatch(r"\d+\.\d\dx the cost of the plain step", plain[2]), plain
        known = rows[f"{name}: the same step reading {bench.BENCH_REFERENCES} known binders of each row's target "
                     f"(--references {bench.BENCH_REFERENCES})"]
        assert re.fullmatch(r"\d+\.\d\dx the cost of the id-only step", known[2]), known
    assert "load + validate + tokenize 5,000 rows" in rows and "data path share of a small step" in rows
    seconds, speedup = r"\d+(\.\d+)? m?s", r"\d+\.\d\dx"        # the reference's cells, measured in this run
    for name in ("tiny", "small"):
        step = next(k for k in rows if k.startswith(f"{name} (") and k.endswith("training step"))
        assert re.fullmatch(seconds, rows[step][1]) and re.fullmatch(speedup, rows[step][2]), rows[step]
        epoch = rows[f"{name}: samples/s; epoch of 1,000,000 rows"][1]
        assert re.fullmatch(r"\S+( k)?; \S+ (s|min|h)", epoch), epoch
    sampling = rows["sampling 256 peptides (small, guidance 0)"]
    assert re.fullmatch(seconds, sampling[1]) and re.fullmatch(speedup, sampling[2]), sampling
    assert rows["sampling 256 peptides (small, guidance 2)"][1:] == ["", ""]    # the reference samples unguided
    data_path = rows["data path: permutation + batch gather"]
    assert re.fullmatch(r"\S+ (k |M )?samples/s", data_path[1]) and re.fullmatch(r"\d+\.\dx", data_path[2]), data_path
    scoring = rows[f"score 512 peptides for a target (small, --draws {mc.DEFAULT_SCORE_DRAWS})"][0]
    assert re.fullmatch(r"\S+ m?s \(\S+ (k )?peptides/s; 10,000 in \S+ (ms|s|min)\)", scoring), scoring
    assert "T4 (65 TFLOP/s fp16)" in written and "arithmetic, not measurement" in written


def test_cpu_path_executes_fewer_flops_than_the_padded_model(result):
    _, rows = parse_table(result[1])
    executed, padded = (float(x.split()[0]) for x in rows["small: FLOPs per step (executed; padded)"][0].split(";"))
    assert 0.4 < executed / padded < 0.8           # lengths 4-20: about 60% of a padded batch is residues


def test_no_host_sync_inside_the_training_step(result):
    _, rows = parse_table(result[1])
    assert rows["tiny: host syncs per step"][0].startswith("0 ")


def test_the_sync_counter_sees_a_sync_when_there_is_one(tmp_path, monkeypatch):
    trainer = mc.Trainer(mc.make_config("tiny", data=str(write_fixture(tmp_path / "d.csv")), device="cpu"),
                         tmp_path / "run")
    idx = torch.arange(64)
    assert bench.profile_step(trainer, idx)["syncs"] == 0
    original = mc.D3PM.losses

    def losses_that_read_a_value(self, *args, **kwargs):
        ce, vb = original(self, *args, **kwargs)
        float(ce.detach())                             # a host read, as a log line per step would do
        return ce, vb
    monkeypatch.setattr(mc.D3PM, "losses", losses_that_read_a_value)
    assert bench.profile_step(trainer, idx)["syncs"] == 1


def test_unknown_preset_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--presets", "small,huge"])
    assert e.value.code == 2 and "huge" in capsys.readouterr().err


# --- the reference: the same work, done plainly -------------------------------------------------

def test_turns_alternate_so_every_variant_sees_the_same_drift(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "_timed", lambda fn, device: calls.append(fn()) or 1.0)
    medians = bench.interleaved({k: (lambda k=k: k) for k in "abc"}, 3, torch.device("cpu"))
    assert calls == list("abccbaabc") and medians == {"a": 1.0, "b": 1.0, "c": 1.0}


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    rows = mc.load_rows(write_fixture(tmp_path_factory.mktemp("ref") / "d.csv"))
    vocab = mc.Vocab.from_rows(rows)
    return rows, vocab, ref.PeptideDataset(rows, vocab)


def scrambled_model(cfg, vocab):
    """Mimir's model with weights far from their initial ones: logits that differ by letter, position and
    condition, so that equal losses mean the same function."""
    model = mc.build_model(cfg, vocab, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    return model


def batch_of(dataset, idx):
    """Rows idx of the reference's Dataset as its DataLoader would batch them."""
    return default_collate([dataset[i] for i in idx])


def test_the_reference_dataset_encodes_as_mimir_does(fixture_data):
    rows, vocab, dataset = fixture_data
    idx = np.arange(0, len(dataset), 7)
    x0, label, target_id = batch_of(dataset, idx)
    assert x0.dtype == label.dtype == target_id.dtype == torch.int64
    assert np.array_equal(x0.numpy(), vocab.encode([rows.sequences[i] for i in idx]))
    assert np.array_equal(label.numpy(), rows.labels[idx])
    assert np.array_equal(target_id.numpy(), vocab.target_ids([rows.targets[i] for i in idx]))


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_the_reference_computes_mimirs_loss_and_gradients(fixture_data, preset):
    """Mimir's plain model (no rotary attention, no C-terminal embedding) with its weights loaded into the
    reference, the same batch and the same noise: the same parameters, loss and gradients, to float
    tolerance (Mimir packs residue rows on the CPU; the reference computes the padded grid, with
    nn.MultiheadAttention)."""
    rows, vocab, dataset = fixture_data
    cfg = mc.make_config(preset, device="cpu", hybrid_coeff=0.01, rotary=False, termini=False)
    mimir = scrambled_model(cfg, vocab)
    reference = ref.ReferenceTrainer(cfg, vocab, dataset, "cpu", mimir.state_dict())
    assert all(isinstance(block.attn, torch.nn.MultiheadAttention) for block in reference.model.blocks)
    mimir_params = ref.reference_weights(dict(mimir.named_parameters()))
    theirs_params = dict(reference.model.named_parameters())
    assert mimir_params.keys() == theirs_params.keys()
    assert all(theirs_params[k].shape == p.shape and torch.equal(theirs_params[k], p) for k, p in mimir_params.items())
    x0, label, target_id = batch_of(dataset, np.random.default_rng(0).permutation(len(dataset))[:256])
    assert label.sum() > 0 and (target_id > 0).sum() > 0 and (x0 == mc.PAD).any()
    noise = lambda: torch.Generator().manual_seed(7)
    ce, vb = reference.diffusion.losses(mimir, x0, label, target_id, generator=noise())
    ours = ce + cfg.hybrid_coeff * vb
    theirs = reference.loss(x0, label, target_id, generator=noise())
    assert torch.allclose(theirs, ours, rtol=1e-5, atol=0) and vb > 0
    ours.backward()
    theirs.backward()
    for name, p in mimir_params.items():
        q = theirs_params[name]
        assert torch.allclose(q.grad, p.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max()), name


def test_the_reference_loads_the_shipped_models_weights_less_its_cterminal_embedding(fixture_data):
    """What the benchmark times: the shipped model's weights in the reference, which has no C-terminal
    embedding (the plain model's weights)."""
    rows, vocab, dataset = fixture_data
    cfg = mc.make_config("tiny", device="cpu")
    assert cfg.rotary and cfg.termini
    state = mc.build_model(cfg, vocab, "cpu").state_dict()
    model = ref.reference_model(cfg, vocab, state, "cpu")
    assert mc.count_params(model) == sum(v.numel() for k, v in state.items() if not k.startswith("cterm_emb."))


def test_the_reference_trains_and_samples(fixture_data):
    rows, vocab, dataset = fixture_data
    cfg = mc.make_config("tiny", device="cpu")
    model = mc.build_model(cfg, vocab, "cpu")
    trainer = ref.ReferenceTrainer(cfg, vocab, dataset, "cpu", model.state_dict())
    losses = [trainer.step() for _ in range(3)]
    assert all(isinstance(x, float) and np.isfinite(x) for x in losses)
    lengths = np.array([4, 9, 20, 12])
    tokens = ref.reference_sample(trainer.model.eval(), trainer.diffusion, vocab, lengths, 1, 1,
                                  generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (4, mc.MAX_LEN) and ((tokens != mc.PAD).sum(1).numpy() == lengths).all()
    assert set("".join(vocab.decode(tokens))) <= set(mc.RESIDUES)
