"""scripts/ablation.py: each lever's run is trained and evaluated once, and the table reads every run."""
import functools

import pytest

import ablation
import mimir_core as mc
import mimir_eval as ev


@pytest.fixture
def quick(monkeypatch):
    """The ablation's machinery on a tiny budget: the tiny preset for 30 steps on the demo data, and an
    evaluation with few samples and one noise draw."""
    small = mc.make_config
    monkeypatch.setattr(mc, "make_config", lambda preset, **kw: small("tiny", **{**kw, "max_steps": 30}))
    monkeypatch.setattr(ev, "evaluate", functools.partial(ev.evaluate, n_samples=60, n_per_target=20, n_draws=1))


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| variant")]


def test_runs_each_variant_once_and_tables_them(quick, tmp_path, capsys):
    folder = tmp_path / "abl"
    ablation.main(["--variants", "plain,default", "--seeds", "0,1", "--device", "cpu",
                   "--checkpoint-dir", str(folder)])
    rows = table_rows(capsys.readouterr().out)
    assert [r.split(" | ")[0] for r in rows] == ["| plain", "| plain (seed 1)", "| default", "| default (seed 1)"]
    assert rows[0].split(" | ")[1:5] == ["off", "off", "1", "off"]                  # rotary, termini, repeat, EMA
    assert rows[2].split(" | ")[1:5] == ["on", "on", "8", "off"]
    evaluation = folder / "ablation_default_seed1" / "evaluation.json"
    assert mc.load_checkpoint(folder / "ablation_default_seed1" / "last.pt")["config"]["seed"] == 1
    stamp = evaluation.stat().st_mtime_ns
    ablation.main(["--variants", "default", "--seeds", "1", "--device", "cpu",
                   "--checkpoint-dir", str(folder)])
    assert evaluation.stat().st_mtime_ns == stamp                       # a finished run is not redone
    capsys.readouterr()
    out = tmp_path / "table.md"
    ablation.main(["--table-only", "--seeds", "0,1", "--checkpoint-dir", str(folder), "--out", str(out)])
    printed = capsys.readouterr()
    assert len(table_rows(printed.out)) == 4 and out.read_text().strip() == printed.out.strip()
    assert "not evaluated yet, left out: ablation_rotary," in printed.err
    assert all(row.count("|") == len(ablation.SETTINGS) + len(ev.METRICS) + 1 for row in table_rows(printed.out))


@pytest.mark.parametrize("args, says", [(["--variants", "plain,rotery"], "unknown variant(s) ['rotery']"),
                                        (["--seeds", "0,one"], "'0,one' is not a comma-separated list")])
def test_bad_arguments_are_clear_errors(args, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        ablation.main(args + ["--table-only"])
    assert exit_.value.code == 2 and says in capsys.readouterr().err
