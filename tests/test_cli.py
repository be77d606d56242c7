"""The command line, end to end, as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mimir_core as mc

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "mimir_core.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_preset_parameter_counts_match_the_guide():
    out = json.loads(cli("presets", "--vocab-size", 25, "--num-targets", 800).stdout)
    for name, guide in {"small": 839_000, "medium": 3_900_000, "large": 21_500_000}.items():
        assert abs(out[name]["params"] / guide - 1) < 0.02, (name, out[name]["params"])
    assert out["small"]["batch_size"] == out["large"]["batch_size"] == 256
    assert (out["small"]["epochs"], out["medium"]["epochs"], out["large"]["epochs"]) == (20, 75, 150)
    assert (out["small"]["n_steps"], out["medium"]["n_steps"], out["large"]["n_steps"]) == (10, 25, 35)
    assert out["tiny"]["params"] < out["small"]["params"]
    assert all(out[name]["ema_decay"] == 0.999 for name in ("small", "medium", "large"))   # they sample with an EMA


def test_train_then_generate_end_to_end(fixture_csv, tmp_path):
    cli("train", "--preset", "tiny", "--data", fixture_csv, "--run-name", "cli", "--checkpoint-dir", tmp_path,
        "--max-steps", 40, "--no-progress", "-v")
    run = tmp_path / "cli"
    assert (run / "best.pt").exists() and (run / "convergence.png").exists()
    proc = cli("generate", "--run-name", "cli", "--checkpoint-dir", tmp_path, "-n", 25, "--label", 1,
               "--target", "P11111", "--min-length", 8, "--max-length", 12, "--seed", 0)
    peptides = proc.stdout.split()
    assert len(peptides) == 25 and all(8 <= len(p) <= 12 and p.isalpha() and p.isupper() for p in peptides)
    # resuming a finished run with more steps continues it
    proc = cli("train", "--preset", "tiny", "--data", fixture_csv, "--run-name", "cli", "--checkpoint-dir",
               tmp_path, "--max-steps", 60, "--resume", "--no-progress")
    assert "resuming" in proc.stderr and "60 steps" in proc.stderr


def test_user_errors_exit_2_with_a_message(fixture_csv, tmp_path):
    proc = cli("generate", "--run-name", "nope", "--checkpoint-dir", tmp_path, check=False)
    assert proc.returncode == 2 and f"there is no run named 'nope' in {tmp_path}" in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("label,target,sequence\n1,,ACDEFG\n")
    proc = cli("train", "--preset", "tiny", "--data", bad, "--checkpoint-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "line 2: label-1 row without a target" in proc.stderr
    proc = cli("train", "--preset", "huge", check=False)
    assert proc.returncode == 2 and "invalid choice: 'huge'" in proc.stderr


def test_quick_start_shim_forwards_to_train(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "--preset" in proc.stdout and "--run-name" in proc.stdout


def test_resume_keeps_the_runs_own_settings_and_refuses_another_preset(fixture_csv, tmp_path):
    common = ["--data", fixture_csv, "--run-name", "r", "--checkpoint-dir", tmp_path, "--no-progress"]
    cli("train", "--preset", "tiny", "--epochs", 3, "--max-steps", 10, "--lr", 1e-3, *common)
    proc = cli("train", "--resume", "--max-steps", 20, *common)           # no --preset, no --epochs, no --lr
    assert "resuming" in proc.stderr and "20 steps" in proc.stderr
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    ckpt_cfg = mc.load_checkpoint(tmp_path / "r" / "last.pt")["config"]
    assert saved["preset"] == ckpt_cfg["preset"] == "tiny"
    assert (ckpt_cfg["epochs"], ckpt_cfg["max_steps"], ckpt_cfg["lr"]) == (3, 20, 1e-3)
    proc = cli("train", "--resume", "--preset", "small", *common, check=False)
    assert proc.returncode == 2 and "holds a tiny run" in proc.stderr and "another run name" in proc.stderr
