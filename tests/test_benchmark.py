"""scripts/benchmark.py: one tiny run through the command line, its table, and the sync counter."""
import contextlib
import io
import re

import pytest
import torch

import benchmark as bench
import mimir_core as mc
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
    assert "load + validate + tokenize 5,000 rows" in rows and "data path share of a small step" in rows
    small_step = next(k for k in rows if k.startswith("small (") and k.endswith("training step"))
    assert rows[small_step][1] == "176.0 ms" and re.fullmatch(r"\d+\.\d\dx", rows[small_step][2])
    assert rows["sampling 256 peptides (small, guidance 0)"][1] == "570.0 ms"
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
