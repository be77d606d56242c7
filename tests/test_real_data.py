"""scripts/real_data.py: the split within targets, and one small run end to end through the evaluation's scorers."""
import json

import mimir_core as mc
import real_data
from conftest import write_fixture


def test_split_holds_out_a_share_of_each_large_target_and_nothing_else(tmp_path):
    path = write_fixture(tmp_path / "d.csv", n_background=100, n_per_target=10)
    text = path.read_text().splitlines()
    text = [l for l in text if not l.startswith("1,O33333")] + ["1,O33333,GGWWAAAA,x"]    # a 1-peptide target
    path.write_text("\n".join(text) + "\n")
    rows = mc.load_rows(path)
    train_idx, held, background = real_data.held_out_split(rows, 10, 0.2, 20, seed=0)
    assert sorted(held) == ["P11111", "Q22222"] and all(len(v) == 2 for v in held.values())
    train = {(rows.targets[i], rows.sequences[i]) for i in train_idx}
    assert not any((t, s) in train for t, seqs in held.items() for s in seqs)
    assert ("O33333", "GGWWAAAA") in train
    assert len(background) == 20 and not set(background) & {rows.sequences[i] for i in train_idx}
    again = real_data.held_out_split(rows, 10, 0.2, 20, seed=0)
    assert again[1] == held and (again[0] == train_idx).all()


def test_a_small_run_is_judged_beside_composition_nearest_neighbour_and_mutated_binders(tmp_path, capsys):
    data = write_fixture(tmp_path / "d.csv", n_background=600, n_per_target=40)
    real_data.main(["--data", str(data), "--out", str(tmp_path / "out"), "--preset", "tiny", "--set", "max_steps=60",
                    "--min-peptides", "20", "--background", "100", "--samples", "30"])
    report = json.loads((tmp_path / "out" / "base" / "real_data.json").read_text())
    assert len(report["score"]["targets"]) == 3 and report["data"]["held-out peptides"] == 24
    assert report["guidance"] == report["tuning"]["guidance"]             # the run's own, tuned in training
    for negatives in ("background", "other_targets", "shuffles"):
        r = report["score"]["weighted"][negatives]
        assert r["positives"] == 24
        assert set(r["difference"]) == {"composition", "nearest", "background ratio", "target ratio"}
        assert all(0 <= r[k]["interval"][0] <= r[k]["auroc"] <= r[k]["interval"][1] <= 1 for k in ("model", "nearest"))
    assert report["score"]["weighted"]["background"]["nearest"]["auroc"] > 0.9   # each target's peptides share its motif
    assert report["score"]["weighted"]["background"]["negatives"] == 3 * 100    # every held-out background row
    generation = report["generation"]
    assert generation["targets"] == 3 and set(generation["generators"]) == {"model", "mutated binders", "composition"}
    assert report["nearness"]["targets"] == 3 and 0 <= report["nearness"]["novel (median)"] <= 1
    out = capsys.readouterr().out
    assert "vs other_targets" in out and "model - nearest" in out and "model - mutated binders" in out
