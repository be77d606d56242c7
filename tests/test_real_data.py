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
    assert generation["rank"] == report["tuning"]["rank"]                  # the run's own, tuned in training
    ranked = {"model unranked"} if generation["rank"] > 1 else set()       # what ranking adds, when it ranks
    assert generation["targets"] == 3
    assert set(generation["generators"]) == {"model", "mutated binders", "composition"} | ranked
    assert report["nearness"]["targets"] == 3 and 0 <= report["nearness"]["novel (median)"] <= 1
    out = capsys.readouterr().out
    assert "vs other_targets" in out and "model - nearest" in out and "model - mutated binders" in out


def test_new_receptors_leave_training_whole_and_are_split_into_known_and_judged_binders(tmp_path):
    path = write_fixture(tmp_path / "d.csv", n_background=100, n_per_target=8)
    rows = mc.load_rows(path)
    train_idx, held, _ = real_data.held_out_split(rows, 10, 0.2, 20, seed=0)
    assert held == {}
    kept, new = real_data.new_receptor_split(rows, train_idx, {"Q22222": ["x"]}, 5, (6, 9), seed=0)
    assert sorted(new) == ["O33333", "P11111"]                              # Q22222 is judged within: never new
    for target, (known, judged) in new.items():
        assert len(known) == 4 and len(judged) == 4 and not set(known) & set(judged)
        assert set(known) | set(judged) == {s for t, s in zip(rows.targets, rows.sequences) if t == target}
    assert not {rows.targets[i] for i in kept} & set(new)
    assert set(kept) | {i for i, t in enumerate(rows.targets) if t in new} == set(train_idx)
    again = real_data.new_receptor_split(rows, train_idx, {"Q22222": ["x"]}, 5, (6, 9), seed=0)
    assert again[1] == new


def test_receptors_never_trained_on_are_judged_given_their_known_binders(tmp_path, capsys):
    data = write_fixture(tmp_path / "d.csv", n_background=600, n_per_target=9)
    real_data.main(["--data", str(data), "--out", str(tmp_path / "out"), "--preset", "tiny", "--set", "max_steps=40",
                    "references=2", "id_drop=0.5", "--min-peptides", "20", "--background", "50", "--samples", "20",
                    "--new-receptors", "3"])
    new = json.loads((tmp_path / "out" / "base" / "real_data.json").read_text())["new receptors"]
    assert new["receptors"] == 3 and new["known binders"] == 12 and new["judged binders"] == 15
    run = mc.load_run(tmp_path / "out" / "base")
    assert new["generation"]["rank"] == run.tuning["binders_rank"]
    ranked = {"model unranked"} if new["generation"]["rank"] > 1 else set()
    assert set(new["generation"]["generators"]) == {"model", "mutated binders", "composition"} | ranked
    assert new["generation"]["targets"] == 3 and len(new["score"]["targets"]) == 3
    assert new["score"]["weighted"]["other_targets"]["positives"] == 15
    assert "Receptors never trained on (3)" in capsys.readouterr().out
