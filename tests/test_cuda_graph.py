"""The training step as one CUDA graph, checked on the CPU: the real rotary form, the tensor lr, a step that
reads nothing on the host and freezes no value, and the capture / restore / recapture bookkeeping with a
stand-in graph that replays the captured function."""
import argparse

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import mimir_core as mc


def tiny(fixture_csv, **kw):
    return mc.make_config("tiny", data=str(fixture_csv), device="cpu", **{"label1_repeat": 1, **kw})


# --- rotary attention in real arithmetic ---------------------------------------------------------

def complex_angles(positions, head_dim):
    """The complex form the model used before: e^(i angle) at each position."""
    freqs = 10_000 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = positions[..., None].float() * freqs
    return torch.polar(torch.ones_like(angles), angles)


def complex_rotate(x, turn):
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * turn).flatten(-2).type_as(x)


@pytest.mark.parametrize("head_dim", [16, 32, 64])
def test_real_rotary_equals_the_complex_form(head_dim):
    g = torch.Generator().manual_seed(head_dim)
    x = torch.randn(64, mc.MAX_LEN, 2, 4, head_dim, generator=g)              # (B, L, q/k, heads, head_dim)
    positions = torch.randint(0, mc.MAX_LEN, (64, mc.MAX_LEN), generator=g)     # per-row, as packed rows have
    cos, sin = mc.rotary_table(head_dim)
    real = mc.rotate(x, cos[positions][..., None, None, :], sin[positions][..., None, None, :])
    old = complex_rotate(x, complex_angles(positions, head_dim)[..., None, None, :])
    assert torch.allclose(real, old, rtol=0, atol=1e-6)
    bf16 = x.bfloat16()                                                         # under autocast: back to bf16
    grid = complex_angles(torch.arange(mc.MAX_LEN), head_dim)[:, None, None, :]
    rotated = mc.rotate(bf16, cos[:, None, None, :], sin[:, None, None, :])
    assert rotated.dtype == torch.bfloat16 and torch.equal(rotated, complex_rotate(bf16, grid))


def test_the_rotary_tables_are_not_saved_and_old_checkpoints_load():
    vocab = mc.Vocab(mc.RESIDUES, ["T1", "T2"])
    model = mc.build_model(mc.make_config("tiny"), vocab, "cpu")
    state = model.state_dict()
    assert not any("rotary" in k for k in state)                                # a checkpoint holds what it held
    fresh = mc.build_model(mc.make_config("tiny", seed=1), vocab, "cpu")
    fresh.load_state_dict(state)                                                # strict
    assert torch.equal(fresh.rotary_cos, model.rotary_cos) and fresh.rotary_cos.shape == (mc.MAX_LEN, 8)


# --- the tensor lr ------------------------------------------------------------------------------

def test_the_tensor_lr_step_equals_the_float_lr_step_bitwise(fixture_csv, tmp_path):
    """Fused AdamW with each param group's lr as a 0-dim tensor (what a graph reads at each replay) takes
    the same step, bit for bit, as with the scheduler's float; the lr changes at every step (warm-up)."""
    eager = mc.Trainer(tiny(fixture_csv), tmp_path / "a")
    tensor = mc.Trainer(tiny(fixture_csv), tmp_path / "b")
    lrs = [mc.CudaGraphStep.lr_buffer(tensor.device) for _ in tensor.optimizer.param_groups]
    seen = []
    for step in range(4):
        idx = torch.arange(step * 64, (step + 1) * 64)
        torch.manual_seed(step)                             # both steps draw the same noise
        a = eager.train_step(*eager.train_data.batch(idx))
        torch.manual_seed(step)
        for lr, group in zip(lrs, tensor.optimizer.param_groups):
            lr.fill_(group["lr"])
        seen.append(lrs[0].item())
        b = tensor.update(*tensor.train_data.batch(idx), lrs=lrs)
        tensor.after_update()
        assert torch.equal(a, b)
        assert all(isinstance(g["lr"], float) for g in tensor.optimizer.param_groups)  # floats again after
    assert len(set(seen)) == 4
    assert all(torch.equal(p, q) for p, q in zip(eager.model.parameters(), tensor.model.parameters()))
    sa, sb = eager.optimizer.state_dict()["state"], tensor.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k][name], sb[k][name]) for k in sa for name in sa[k])


# --- nothing read on the host, nothing frozen ------------------------------------------------------

HOST_READS = ("_local_scalar_dense", "nonzero", "item")


class OpLog(TorchDispatchMode):
    """Every operator with its non-tensor arguments (tensors by dtype and shape only)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    @staticmethod
    def describe(a):
        if isinstance(a, torch.Tensor):
            return ("tensor", a.dtype, tuple(a.shape))
        plain = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
        return a if isinstance(a, plain) else type(a).__name__      # e.g. the profiler's record handles

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves, _ = tree_flatten((args, kwargs or {}))
        self.ops.append((str(func.overloadpacket.__name__), tuple(map(self.describe, leaves))))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("settings", [{}, {"references": 2, "id_drop": 0.5, "reference_attention": True}])
def test_the_step_reads_nothing_on_the_host_and_freezes_no_value(fixture_csv, tmp_path, settings):
    """Two steps with different learning rates run the same operators in the same order with the same
    non-tensor arguments (so a captured graph replays the step whatever its lr), and none reads a value
    back to the host. As on CUDA, the model does not pack residues; and as at a capture, a warm-up step has
    made AdamW's state. The same with known binders as references (drawn on the device, in the step)."""
    trainer = mc.Trainer(tiny(fixture_csv, **settings), tmp_path / "run")
    trainer.model.pack_residues = False
    trainer.train_step(*trainer.train_data.batch(torch.arange(64, 128)))
    lrs = [mc.CudaGraphStep.lr_buffer(trainer.device) for _ in trainer.optimizer.param_groups]
    logs = []
    for step, lr in enumerate((1e-3, 3e-4)):
        for t in lrs:
            t.fill_(lr)
        idx = torch.arange(step * 64, (step + 1) * 64)      # the static index buffer's content
        with OpLog() as ops:
            trainer.update(*trainer.train_data.batch(idx), lrs=lrs)
        logs.append(ops.ops)
    names = [name for name, _ in logs[0]]
    assert names == [name for name, _ in logs[1]] and len(names) > 100
    assert logs[0] == logs[1]                               # no argument differs: the lr came as a tensor
    assert not [name for name in names if name in HOST_READS]
    adamw = [args for name, args in logs[0] if name == "_fused_adamw_"]
    assert adamw and all(("tensor", lrs[0].dtype, ()) in args for args in adamw)


# --- capture, restore, recapture: a stand-in graph on the CPU -------------------------------------

class ReplayGraph:
    """Stands in for CudaGraph on the CPU. capture(fn) keeps fn and runs nothing, as a CUDA capture changes
    nothing on the device; replay() runs fn again. fn must therefore read what changes between steps from
    the static buffers, as the graph's kernels would."""
    made = []

    def __init__(self):
        self.fn, self.replays = None, 0
        ReplayGraph.made.append(self)

    def capture(self, fn):
        assert self.fn is None, "captured twice"
        self.fn = fn

    def replay(self):
        self.replays += 1
        return self.fn()


@pytest.fixture
def stand_in(monkeypatch):
    ReplayGraph.made = []
    monkeypatch.setattr(mc.CudaGraphStep, "make_graph", ReplayGraph)
    monkeypatch.setattr(mc.CudaGraphStep, "device_types", ("cpu",))
    return ReplayGraph


def weights(run_dir):
    return mc.load_checkpoint(run_dir / "last.pt")["model"]


@pytest.mark.parametrize("settings", [{}, {"references": 2, "id_drop": 0.5}])
def test_the_graph_step_trains_as_the_eager_step(fixture_csv, tmp_path, stand_in, settings):
    """Warm-up steps are real steps (eager), then one capture and a replay per step: the same weights and
    losses as the eager run, bit for bit (with references too: their draw is part of the step)."""
    eager = mc.train(tiny(fixture_csv, epochs=2, **settings), tmp_path / "eager", progress=False)
    trainer = mc.Trainer(tiny(fixture_csv, epochs=2, cuda_graph=True, **settings), tmp_path / "graph")
    assert isinstance(trainer.graph_step, mc.CudaGraphStep)
    trainer.run(progress=False)
    assert trainer.step == eager["step"] == 72
    assert len(stand_in.made) == 1 and trainer.graph_step.captures == 1
    assert stand_in.made[0].replays == 72 - mc.GRAPH_WARMUP_STEPS
    assert all(g["capturable"] for g in trainer.optimizer.param_groups)
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "graph")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ((tmp_path / "eager" / "history_steps.csv").read_text()
            == (tmp_path / "graph" / "history_steps.csv").read_text())


def test_an_interrupted_graph_run_resumes_to_the_same_weights(fixture_csv, tmp_path, stand_in):
    """A resume restores the optimizer's state (new tensors): the resumed run warms up and captures again,
    and ends with the uninterrupted run's weights, which are the eager run's."""
    cfg = tiny(fixture_csv, epochs=3, cuda_graph=True)
    mc.train(tiny(fixture_csv, epochs=3), tmp_path / "eager", progress=False)
    straight = mc.train(cfg, tmp_path / "straight", progress=False)

    def kill_at_50(step):                               # mid-epoch 2; the graph was captured at step 4
        if step == 50:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mc.train(cfg, tmp_path / "resumed", progress=False, on_step=kill_at_50)
    assert mc.load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 50
    before = len(stand_in.made)
    resumed = mc.train(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["step"] == straight["step"] == 108
    assert len(stand_in.made) == before + 1 and stand_in.made[-1].replays == 108 - 50 - mc.GRAPH_WARMUP_STEPS
    a, b, c = weights(tmp_path / "straight"), weights(tmp_path / "resumed"), weights(tmp_path / "eager")
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert ((tmp_path / "straight" / "history_steps.csv").read_text()
            == (tmp_path / "resumed" / "history_steps.csv").read_text())


def test_a_restore_forgets_the_graph_and_the_next_capture_is_capturable(fixture_csv, tmp_path, stand_in):
    trainer = mc.Trainer(tiny(fixture_csv, cuda_graph=True, max_steps=5), tmp_path / "run")
    trainer.run(progress=False)
    step = trainer.graph_step
    assert step.captures == 1 and step.graph is not None
    ckpt = mc.load_checkpoint(tmp_path / "run" / "last.pt")
    for group in ckpt["optimizer"]["param_groups"]:
        group["capturable"] = False                     # as a checkpoint of the eager step holds
    trainer.restore(ckpt)
    assert step.graph is None and step.eager_left == mc.GRAPH_WARMUP_STEPS
    assert not any(g["capturable"] for g in trainer.optimizer.param_groups)
    for b in range(mc.GRAPH_WARMUP_STEPS + 2):
        step(torch.arange(b * 64, (b + 1) * 64))
    assert step.captures == 2 and stand_in.made[-1].replays == 2
    assert all(g["capturable"] for g in trainer.optimizer.param_groups)


def test_the_eager_step_stays_where_a_graph_cannot_run(fixture_csv, tmp_path, capsys):
    assert mc.Trainer(tiny(fixture_csv), tmp_path / "a").graph_step is None                # off by default
    assert mc.Trainer(tiny(fixture_csv, cuda_graph=True), tmp_path / "b").graph_step is None   # the CPU
    assert "cuda_graph is on, but it needs a CUDA GPU" in capsys.readouterr().err


# --- the settings -----------------------------------------------------------------------------

def test_precision_and_cuda_graph_settings(fixture_csv, tmp_path, monkeypatch):
    parser = mc.build_parser()
    args = parser.parse_args(["train", "--precision", "fp16", "--cuda-graph"])
    assert (args.precision, args.cuda_graph) == ("fp16", True)
    args = parser.parse_args(["train", "--no-cuda-graph"])
    assert (args.precision, args.cuda_graph) == (None, False)
    assert parser.parse_args(["train"]).cuda_graph is None
    assert any(isinstance(a, argparse.BooleanOptionalAction) and "--cuda-graph" in a.option_strings
               for a in parser._subparsers._group_actions[0].choices["train"]._actions)
    assert (mc.Config().precision, mc.Config().cuda_graph) == ("auto", False)
    with pytest.raises(mc.DataError, match="precision = 'fp8' is out of range"):
        mc.make_config("tiny", precision="fp8")
    cuda = torch.device("cuda")
    for capability, auto in (((7, 5), torch.float16), ((8, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert mc.amp_dtype(cuda) is mc.amp_dtype(cuda, "auto") is auto
        assert mc.amp_dtype(cuda, "fp16") is torch.float16 and mc.amp_dtype(cuda, "fp32") is None
    assert mc.amp_dtype(cuda, "bf16") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))
    with pytest.raises(mc.DataError, match="bf16 needs a GPU of compute capability 8.0"):
        mc.amp_dtype(cuda, "bf16")
    assert all(mc.amp_dtype(torch.device("cpu"), p) is None for p in mc.PRECISIONS)


def test_a_resumed_run_may_change_precision_and_cuda_graph(fixture_csv, tmp_path):
    mc.train(tiny(fixture_csv, max_steps=3), tmp_path / "run", progress=False)
    trainer = mc.Trainer(tiny(fixture_csv, max_steps=6, precision="fp32", cuda_graph=True), tmp_path / "run",
                         resume=True)
    assert (trainer.cfg.precision, trainer.cfg.cuda_graph) == ("fp32", True)
    saved = mc.load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    del saved["precision"], saved["cuda_graph"]                 # a run saved before the settings existed
    assert (mc.config_from_saved(saved).precision, mc.config_from_saved(saved).cuda_graph) == ("auto", False)


# --- on a GPU: a real capture ------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_on_a_gpu_the_captured_step_trains_as_the_eager_step_and_resumes(fixture_csv, tmp_path, precision):
    """torch.cuda.CUDAGraph itself: the graph run's losses follow the eager run's, and a graph run killed
    mid-epoch resumes (warm-up and capture again) to the uninterrupted graph run's weights."""
    cfg = dict(epochs=3, device="cuda", precision=precision)
    mc.train(mc.make_config("tiny", data=str(fixture_csv), label1_repeat=1, **cfg), tmp_path / "eager",
             progress=False)
    graph_cfg = mc.make_config("tiny", data=str(fixture_csv), label1_repeat=1, cuda_graph=True, **cfg)
    mc.train(graph_cfg, tmp_path / "graph", progress=False)

    def kill_at_50(step):
        if step == 50:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mc.train(graph_cfg, tmp_path / "resumed", progress=False, on_step=kill_at_50)
    mc.train(graph_cfg, tmp_path / "resumed", resume=True, progress=False)
    losses = {name: [float(ln.split(",")[-1]) for ln in (tmp_path / name / "history_steps.csv").read_text().split()[1:]]
              for name in ("eager", "graph", "resumed")}
    assert len(losses["graph"]) == len(losses["eager"]) == 108
    assert max(abs(a - b) for a, b in zip(losses["graph"], losses["eager"])) < 0.05
    a, b = weights(tmp_path / "graph"), weights(tmp_path / "resumed")
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a), max((a[k] - b[k]).abs().max() for k in a)
