"""Best-of-K generation: for a target, K candidates per peptide (the model's samples and its known binders mutated
by hand), the best kept by the model's score; the run tunes whether to (tuning.json `rank`)."""
import json

import numpy as np
import pytest

import mimir_core as mc
import mimir_eval as ev
from conftest import FIXTURE_MOTIFS


def figures(rank, per_target, novel=1.0, unique=1.0, js=0.0, pool="mixed"):
    return {"guidance": 1.0, "rank": rank, "pool": pool, "specificity": float(np.mean(list(per_target.values()))),
            "per_target": per_target, "novel": novel, "unique": unique, "composition_js": js}


def with_rank(run_dir, **tuning) -> mc.Run:
    run = mc.load_run(run_dir)
    run.tuning = {**run.tuning, **tuning}
    return run


def test_ranking_returns_the_best_scored_candidates_best_first(trained_run, monkeypatch):
    """A target with no known binders ranks the model's samples: with a stand-in score (W count), every batch is
    the best m of its candidates, in order, and the count and batch sizes are those asked for."""
    run = with_rank(trained_run, rank=1)
    run.stats = {**run.stats, "binders": {}}
    by_w = lambda peptides: [{"score": float(p.count("W"))} for p in peptides]
    monkeypatch.setattr(mc, "score", lambda run, peptides, *a, **k: by_w(peptides))
    plain = mc.generate(run, 60, target="O33333", seed=3)
    batches = list(mc.generate_batches(run, 60, target="O33333", seed=3, rank=4, batch_size=25))
    assert [len(b) for b in batches] == [25, 25, 10]
    for batch in batches:
        w = [p.count("W") for p in batch]
        assert w == sorted(w, reverse=True)
    ranked = [p for b in batches for p in b]
    assert np.mean([p.count("W") for p in ranked]) > np.mean([p.count("W") for p in plain]) + 0.5
    assert mc.generate(run, 60, target="O33333", seed=3, rank=4, batch_size=25) == ranked      # seeded


def test_a_target_with_known_binders_ranks_them_mutated_until_novel(trained_run, monkeypatch):
    """The candidates are the target's known binders mutated by hand: every peptide returned is a novel variant
    of one, of its length, the best of its batch by the score first."""
    run = with_rank(trained_run, rank=1)
    known = run.stats["binders"]["Q22222"]
    by_k = lambda peptides: [{"score": float(p.count("K"))} for p in peptides]
    monkeypatch.setattr(mc, "score", lambda run, peptides, *a, **k: by_k(peptides))
    ranked = mc.generate(run, 30, target="Q22222", seed=0, rank=4, pool="mutants")
    assert len(ranked) == 30 and (mc.best_identity(ranked, known) < mc.NOVEL_IDENTITY).all()
    assert all(any(len(k) == len(p) and mc.identity(p, k) >= 0.5 for k in known) for p in ranked)
    assert [p.count("K") for p in ranked] == sorted((p.count("K") for p in ranked), reverse=True)
    pool = mc.mutated_binders(known, 120, mc.substitution_probs(run.stats["composition"]), np.random.default_rng(5))
    assert np.mean([p.count("K") for p in ranked]) > np.mean([p.count("K") for p in pool]) + 0.3
    # length limits hold: the parents are the binders of those lengths
    short = mc.generate(run, 20, target="Q22222", seed=0, rank=2, pool="mutants", min_length=8, max_length=9)
    assert all(8 <= len(p) <= 9 for p in short)


def test_the_run_ranks_by_its_own_choice_unless_told(trained_run):
    run = with_rank(trained_run, rank=4, pool="mutants", binders_rank=2, binders_pool="mixed")
    assert mc.run_ranking(run, None, None, "P11111") == (4, "mutants")
    assert mc.run_ranking(run, None, None, None) == (1, "mixed")                    # a label alone
    assert mc.run_ranking(run, None, None, None, ["PPLPAA"]) == (2, "mixed")
    assert mc.run_ranking(run, 3, "mixed", "P11111") == (3, "mixed")
    for bad in (0, mc.MAX_RANK + 1, 2.5):
        with pytest.raises(mc.DataError, match="rank must be a whole number from 1"):
            mc.run_ranking(run, bad, None, "P11111")
    with pytest.raises(mc.DataError, match="pool must be one of mixed, mutants"):
        mc.run_ranking(run, 2, "samples", "P11111")
    ranked, plain = (mc.generate(run, 20, target="P11111", seed=1, rank=r) for r in (None, 1))
    assert ranked == mc.generate(run, 20, target="P11111", seed=1, rank=4, pool="mutants") and ranked != plain
    assert mc.generate(run, 20, label=0, seed=1) == mc.generate(run, 20, label=0, seed=1, rank=1)


def test_a_mixed_pool_ranks_the_models_samples_beside_the_mutants(trained_run, monkeypatch):
    """pool "mixed": half the candidates are the model's samples. A score that prefers peptides unlike any known
    binder picks them over the mutants."""
    run = with_rank(trained_run, rank=1)
    known = run.stats["binders"]["P11111"]
    far = lambda peptides: [{"score": -float(x)} for x in mc.nearest_neighbour_scores(peptides, known)]
    monkeypatch.setattr(mc, "score", lambda run, peptides, *a, **k: far(peptides))
    mixed = mc.generate(run, 20, target="P11111", seed=2, rank=4, pool="mixed")
    mutants = mc.generate(run, 20, target="P11111", seed=2, rank=4, pool="mutants")
    a_mutant = lambda p: any(len(k) == len(p) and mc.identity(p, k) >= 0.5 for k in known)
    assert sum(not a_mutant(p) for p in mixed) >= 10 and all(a_mutant(p) for p in mutants)


def test_ranking_is_kept_only_when_measurably_more_specific_and_within_the_guards():
    t = [f"T{i}" for i in range(8)]
    plain = figures(1, {x: 0.70 for x in t})
    clear = figures(mc.RANK_POOL, {x: 0.80 + 0.01 * i for i, x in enumerate(t)}, pool="mutants")
    clearer = figures(mc.RANK_POOL, {x: 0.82 + 0.01 * i for i, x in enumerate(t)}, pool="mixed")
    noisy = figures(mc.RANK_POOL, {x: 0.70 + (0.02 if i % 2 else -0.01) for i, x in enumerate(t)}, pool="mixed")
    assert mc.choose_rank(plain, [noisy, clear], 0.1)[:2] == (mc.RANK_POOL, "mutants")
    assert mc.choose_rank(plain, [clearer, clear], 0.1)[:2] == (mc.RANK_POOL, "mixed")       # the most specific
    rank, pool, why = mc.choose_rank(plain, [noisy], 0.1)
    assert rank == 1 and "none better by 2 SE" in why
    for bad, reason in (({"novel": 0.85}, "novel"), ({"unique": 0.9}, "unique"), ({"composition_js": 0.2}, "JS")):
        rank, pool, why = mc.choose_rank(plain, [{**clear, **bad}], 0.1)
        assert rank == 1 and reason in why
    assert mc.choose_rank(plain, [{**clearer, "unique": 0.9}, clear], 0.1)[:2] == (mc.RANK_POOL, "mutants")


def test_training_tunes_whether_to_rank(trained_run):
    tuning = json.loads((trained_run / mc.TUNING_FILE).read_text())
    assert tuning["rank"] in (1, mc.RANK_POOL) and tuning["pool"] in mc.POOLS
    assert tuning["rank_why"].startswith("the best 1 of 4")
    assert [f["pool"] for f in tuning["rank_grid"]] == list(mc.POOLS)
    for ranked in tuning["rank_grid"]:
        assert ranked["rank"] == mc.RANK_POOL and ranked["guidance"] == tuning["guidance"]
        assert set(ranked["per_target"]) == set(FIXTURE_MOTIFS)
    plain = next(f for f in tuning["grid"] if f["guidance"] == tuning["guidance"])
    assert (tuning["rank"], tuning["pool"]) == mc.choose_rank(plain, tuning["rank_grid"], tuning["composition_limit"])[:2]


def test_the_command_line_ranks_plain_sampling_only(trained_run, capsys):
    args = ["generate", "--run-name", trained_run.name, "--checkpoint-dir", str(trained_run.parent), "-n", "12",
            "--target", "Q22222", "--seed", "4"]
    mc.main(args + ["--rank", "4"])
    lines = capsys.readouterr().out.split()
    assert lines == mc.generate(mc.load_run(trained_run), 12, target="Q22222", seed=4, rank=4)
    with pytest.raises(SystemExit) as e:
        mc.main(args + ["--rank", "0"])
    assert e.value.code == 2 and "--rank" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mc.main(args + ["--rank", "2", "--from", "PPLPAAKR"])
    assert e.value.code == 2 and "--rank and --pool go with plain sampling" in capsys.readouterr().err
    mc.main(args + ["--rank", "2", "--pool", "mutants"])
    assert capsys.readouterr().out.split() == mc.generate(mc.load_run(trained_run), 12, target="Q22222", seed=4,
                                                          rank=2, pool="mutants")


def test_the_evaluation_shows_what_ranking_adds(trained_run):
    run = with_rank(trained_run, rank=mc.RANK_POOL, pool="mutants")
    val, train_rows = ev.evaluation_split(run)
    on_target = ev.TargetSamples(run, 40, 0, None)
    comps = ev.baseline_compositions(run, train_rows)
    report = ev.generation_report(run, val, train_rows, on_target, comps, 0)
    assert report["rank"] == mc.RANK_POOL and report["pool"] == "mutants"
    assert set(report["generators"]) == {"model", "mutated binders", "composition", "model unranked"}
    assert "model unranked" in report["difference"]
    assert on_target["P11111"] == mc.generate(run, 40, target="P11111", seed=0, rank=mc.RANK_POOL)
    text = ev.format_generation(report)
    assert "the best 1 of 4 candidates (the target's known binders mutated" in text and "model - model unranked" in text


def test_the_tuning_ranks_candidates_with_the_mix_it_has_just_chosen(trained_run, monkeypatch):
    path = trained_run / mc.TUNING_FILE
    before = path.read_text()
    seen = []
    try:
        path.write_text(json.dumps({**json.loads(before), "version": mc.TUNING_VERSION - 1, "score_mix": 1.0}))
        monkeypatch.setattr(mc, "tune_score_mix", lambda *a, **k: {"score_mix": 0.25, "why": "chosen", "grid": []})
        monkeypatch.setattr(mc, "tune_guidance", lambda run, *a, **k: seen.append(mc.run_score_mix(run)) or
                            {"guidance": 0.0, "why": "-", "grid": [], "rank": 1, "pool": "mixed", "rank_why": "-",
                             "rank_grid": []})
        assert mc.tune_run(trained_run, {})["score_mix"] == 0.25 and seen == [0.25]
    finally:
        path.write_text(before)                             # the shared run keeps its own tuning


def test_the_notebook_says_what_the_run_chose(trained_run):
    import mimir_colab as colab
    text = colab.tuning_summary(with_rank(trained_run, rank=4, pool="mutants", rank_why="as measured"))
    assert "its peptides for a target: the best 1 of 4 candidates (mutants) by its score (as measured)" in text
    assert "its peptides for a target: its samples;" in colab.tuning_summary(with_rank(trained_run, rank=1))
