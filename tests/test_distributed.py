"""Data-parallel training under torchrun (gloo on the CPU, 2 processes spawned by the test)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mimir_core as mc

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MIMIR_DDP_TIMEOUT": "60"}


def train_cmd(nproc, *args):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return (launcher if nproc > 1 else [sys.executable]) + [str(ROOT / "mimir_core.py"), "train", *map(str, args)]


def run(cmd, timeout=240):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    return proc


def steps(run_dir):
    with open(run_dir / "history_steps.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run with 1 process (batch 64) and with 2 processes (32 rows each)."""
    tmp = tmp_path_factory.mktemp("ddp")
    from conftest import write_fixture
    data = write_fixture(tmp / "data.csv")
    common = lambda max_steps: ["--preset", "tiny", "--data", data, "--checkpoint-dir", tmp, "--max-steps",
                                max_steps, "--device", "cpu", "--no-progress"]
    for nproc in (1, 2):
        proc = run(train_cmd(nproc, *common(8), "--run-name", f"p{nproc}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, data, common


def test_two_processes_follow_the_one_process_trajectory(runs):
    tmp, _, _ = runs
    one, two = steps(tmp / "p1"), steps(tmp / "p2")
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        for key in ("ce", "vb", "loss", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a, b)
    w1 = mc.load_checkpoint(tmp / "p1" / "last.pt")["model"]
    w2 = mc.load_checkpoint(tmp / "p2" / "last.pt")["model"]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


def test_checkpoints_move_between_one_and_two_processes(runs):
    tmp, _, common = runs
    for nproc, name in ((1, "p2"), (2, "p1")):              # 2-process checkpoint resumed by 1 and vice versa
        proc = run(train_cmd(nproc, *common(12), "--run-name", name, "--resume"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert mc.load_checkpoint(tmp / name / "last.pt")["step"] == 12
        assert len(steps(tmp / name)) == 12


def test_a_failing_rank_stops_the_whole_run(runs, tmp_path):
    _, data, _ = runs
    script = tmp_path / "fail.py"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
import mimir_core as mc
def fail_on_rank_1(step):
    if os.environ["RANK"] == "1" and step == 3:
        raise RuntimeError("rank 1 failed on purpose")
cfg = mc.make_config("tiny", data={str(data)!r}, max_steps=50, device="cpu")
mc.train(cfg, {str(tmp_path / 'run')!r}, progress=False, on_step=fail_on_rank_1)
""")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = run(launcher, timeout=180)                       # a hang would hit the timeout and fail the test
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr
