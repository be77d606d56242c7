"""The notebook as Colab users meet it, and the traps it showed.

The notebook runs in a stand-in for Colab: the fake `google.colab` of tests/fake_colab preloaded in the
kernel (as Colab preloads its own), a fresh /content-like working folder, the notebook executed from memory
(not from the repository), the form edited as a user edits it, and a Drive folder that outlives the VM.
A disconnect is a killed kernel plus a wiped working folder. Smoke mode: the tiny preset on the CPU.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

import mimir_colab
import mimir_core as mc
from conftest import write_fixture

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "train_colab.ipynb"
FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"
SKIPPED_DIRS = {".git", ".venv", "__pycache__", "checkpoints", ".pytest_cache", ".ipynb_checkpoints"}


# --- the user's side: the repository as GitHub hands it out, and their data -----------------------


def repository_files() -> list:
    """The repository's files as they are on disk: git's list (tracked and new, not ignored), or a walk."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        names = out.split("\0")
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if not SKIPPED_DIRS & set(p.parts)]
    return sorted(n for n in names if n and (ROOT / n).is_file())


@pytest.fixture(scope="session")
def user_files(tmp_path_factory):
    """What the user has on their computer: the repository's zip (GitHub's *Download ZIP*: one top folder),
    a zip of something else, two datasets (one with errors); and the repository as a git URL, plus a git
    URL of another repository."""
    tmp = tmp_path_factory.mktemp("user")
    files = repository_files()
    with zipfile.ZipFile(tmp / "mimir-main.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name in files:
            z.write(ROOT / name, f"mimir-main/{name}")
    with zipfile.ZipFile(tmp / "photos.zip", "w") as z:
        z.writestr("photos/cat.txt", "not the repository")
    good = write_fixture(tmp / "peptides.csv", n_background=600, n_per_target=60)
    lines = good.read_text().splitlines()
    bad = tmp / "peptides_draft.csv"
    bad.write_text("\n".join(lines[:-3] + ["2,,ACDEFGH,prot1", "1,,KLMNPQR,prot2", "0,,AC,prot3"]) + "\n")
    git = ["git", "-c", "user.name=user", "-c", "user.email=user@example.org", "-c", "init.defaultBranch=main"]
    for repo, names in ((tmp / "mimir.git", files), (tmp / "other.git", [])):
        repo.mkdir()
        for name in names:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, repo / name)
        (repo / "README.md").write_text((ROOT / "README.md").read_text() if names else "# something else\n")
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
            subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)
    return {"zip": tmp / "mimir-main.zip", "other_zip": tmp / "photos.zip", "good": good, "bad": bad,
            "repo_url": f"file://{tmp / 'mimir.git'}", "other_url": f"file://{tmp / 'other.git'}"}


# --- the stand-in for Colab ------------------------------------------------------------------------


class Colab:
    """One user's Colab: a VM whose working folder (/content) a disconnect wipes, a Google Drive that
    outlives it, and the user's computer (what the file dialog picks, where downloads land)."""

    def __init__(self, tmp: Path):
        self.content, self.drive, self.downloads = tmp / "content", tmp / "drive", tmp / "downloads"
        self.uploads, self.ipython = tmp / "uploads.json", tmp / "ipython"
        for folder in (self.content, self.drive / "MyDrive", self.downloads):
            folder.mkdir(parents=True)
        startup = self.ipython / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-colab.py").write_text("import google.colab  # preloaded, as in Colab\n")

    def queue_uploads(self, *picks):
        """What the user picks in the next file dialogs, one list of files each ([]: cancel)."""
        self.uploads.write_text(json.dumps([[str(p) for p in pick] for pick in picks]))

    def disconnect(self):
        """The VM goes away: everything in its working folder is lost, Drive stays."""
        shutil.rmtree(self.content)
        self.content.mkdir()

    def env(self) -> dict:
        return {**os.environ, "MIMIR_SMOKE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(FAKE_COLAB),
                "IPYTHONDIR": str(self.ipython), "MIMIR_COLAB_CONTENT": str(self.content),
                "FAKE_COLAB_UPLOADS": str(self.uploads), "FAKE_COLAB_DOWNLOADS": str(self.downloads),
                "FAKE_COLAB_DRIVE": str(self.drive)}

    @contextmanager
    def kernel(self, kill_at_step=None):
        """A Colab session (one kernel). kill_at_step: the VM dies when training reaches that step."""
        client = NotebookClient(nbformat.v4.new_notebook(), kernel_name="python3", timeout=300,
                                resources={"metadata": {"path": str(self.content)}})
        with client.setup_kernel(env=self.env(), cwd=str(self.content)):
            yield Session(client, kill_at_step)


KILL = """import os, signal
import mimir_core as mc
_train_step = mc.Trainer.train_step
def train_step(self, *batch):
    if self.step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)        # the VM goes away mid-training
    return _train_step(self, *batch)
mc.Trainer.train_step = train_step
"""


class Session:
    def __init__(self, client, kill_at_step):
        self.client, self.kill_at_step = client, kill_at_step

    def notebook(self, settings: dict):
        """The committed notebook with the Settings form filled in as a user would."""
        nb = nbformat.read(NOTEBOOK, as_version=4)
        form = next(c for c in nb.cells if c.cell_type == "code" and "# @title Settings" in c.source)
        for key, value in settings.items():
            form.source, n = re.subn(rf"^{key} = .*?(  # @param.*)$", lambda m: f"{key} = {value!r}{m.group(1)}",
                                     form.source, flags=re.M)
            assert n == 1, f"no form field {key}"
        if self.kill_at_step is not None:
            train = next(i for i, c in enumerate(nb.cells) if "mc.train(" in c.source)
            nb.cells.insert(train, nbformat.v4.new_code_cell(KILL.format(step=self.kill_at_step)))
        return nb

    def run_all(self, until: str | None = None, **settings) -> "Result":
        """Runtime > Run all: the cells in order, stopping at the first error (with `until`, after the first
        code cell that holds that text, as *Run before* on the next cell does)."""
        nb = self.notebook(settings)
        self.client.nb = nb
        texts, error = [], None
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            try:
                self.client.execute_cell(cell, index)
            except CellExecutionError as e:
                error = e.ename
            except DeadKernelError:
                error = "DeadKernelError"
            texts += [cell_text(out) for out in cell.get("outputs", [])]
            if error or (until is not None and until in cell.source):
                break
        return Result("\n".join(texts), error)


class Result:
    def __init__(self, text: str, error):
        self.text, self.error = text, error

    def __repr__(self):
        return f"error {self.error}; output:\n{self.text[-20000:]}"


def cell_text(out) -> str:
    if out.output_type == "stream":
        return out.text
    if out.output_type == "error":
        return f"{out.ename}: {out.evalue}"
    return out.get("data", {}).get("text/plain", "")


@pytest.fixture
def colab(tmp_path):
    return Colab(tmp_path)


def no_flags(text: str) -> bool:
    """A notebook user has no command-line flags: messages must not name them."""
    return not re.search(r"--(resume|skip-invalid|run-name|epochs|device)\b", text)


# --- Run all, as users do it -----------------------------------------------------------------------


def test_defaults_with_the_repository_zip(colab, user_files):
    """Defaults (demo data, REPO_URL empty): a cancelled dialog, then a CSV and a wrong zip given instead of
    the repository's zip, each named; then the whole notebook runs and downloads the model with the history."""
    colab.queue_uploads([])
    with colab.kernel() as session:
        cancelled = session.run_all()
        assert cancelled.error == "RuntimeError" and "No file was uploaded" in cancelled.text, cancelled
        colab.queue_uploads([user_files["good"]], [user_files["other_zip"]], [user_files["zip"]])
        run = session.run_all()
    assert run.error is None, run
    assert "peptides.csv: not a zip of the Mimir repository" in run.text
    assert "photos.zip: not a zip of the Mimir repository" in run.text
    code = colab.content / "mimir" / "mimir-main"
    assert f"Mimir code: {code}" in run.text and (code / "mimir_core.py").exists()
    run_dir = colab.content / "checkpoints" / "colab_tiny_demo"
    assert f"run folder: {run_dir}" in run.text and (run_dir / "last.pt").exists()
    assert re.search(r"\d+ ms a step: the remaining [\d,]+ steps take about", run.text), run
    assert no_flags(run.text), run
    archive = colab.downloads / "colab_tiny_demo_model.zip"
    names = set(zipfile.ZipFile(archive).namelist())
    assert {f"colab_tiny_demo/{name}" for name in ("model.pt", "history.json", "history_steps.csv", "convergence.png",
                                                   "evaluation.json", "evaluation.png")} <= names
    assert not any(name.endswith(("last.pt", "best.pt")) for name in names)
    zipfile.ZipFile(archive).extractall(colab.downloads)
    model = mc.load_run(colab.downloads / "colab_tiny_demo")
    best = mc.load_checkpoint(run_dir / "best.pt")["model"]
    assert all(torch.equal(best[k], v) for k, v in model.model.state_dict().items())
    assert len(mc.generate(model, n=5, target=model.vocab.targets[0])) == 5


def test_clone_and_csv_uploads(colab, user_files):
    """REPO_URL: a wrong repository, then the right one. Then the user's CSV: with errors (the message names the
    form's SKIP_INVALID), skipped (the kept upload, no second dialog), then a corrected file under a new run name
    (other data never continue an old run) and the old run name given for it (refused)."""
    with colab.kernel() as session:
        wrong = session.run_all(REPO_URL=user_files["other_url"])
        assert wrong.error == "RuntimeError" and "gave no Mimir code" in wrong.text, wrong
        assert not (colab.content / "mimir").exists()
        colab.queue_uploads([user_files["bad"]])
        bad = session.run_all(REPO_URL=user_files["repo_url"], DATA_SOURCE="upload")
        assert bad.error == "DataError" and "3 problem(s) in 3 line(s)" in bad.text, bad
        assert "1 x label '...' is not 0 or 1" in bad.text and "1 x length N outside 4-20" in bad.text
        assert "tick SKIP_INVALID in the Settings" in bad.text and no_flags(bad.text)
        skipped = session.run_all(REPO_URL=user_files["repo_url"], DATA_SOURCE="upload", SKIP_INVALID=True)
        assert skipped.error is None, skipped
        assert "Skipping 3 problem(s)" in skipped.text
        colab.queue_uploads([user_files["good"]])
        good = session.run_all(REPO_URL=user_files["repo_url"], DATA_SOURCE="upload", NEW_UPLOAD=True)
        assert good.error is None, good
        old_name = f"colab_tiny_peptides_draft_{mc.file_checksum(user_files['bad'])[:8]}"
        refused = session.run_all(REPO_URL=user_files["repo_url"], DATA_SOURCE="upload", RUN_NAME=old_name)
    assert (colab.content / "mimir" / "mimir_core.py").exists()
    runs = colab.content / "checkpoints"
    new_name = f"colab_tiny_peptides_{mc.file_checksum(user_files['good'])[:8]}"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == sorted([old_name, new_name])
    assert "resuming" not in good.text and "nothing to do" not in good.text
    assert (runs / new_name / "history_steps.csv").read_text().splitlines()[1].startswith("1,")
    assert refused.error == "DataError" and "holds other data" in refused.text, refused
    assert "choose another run name (RUN_NAME in the Settings)" in refused.text and no_flags(refused.text)


def test_drive_data_and_a_disconnect_mid_training(colab, user_files):
    """Data on Drive, SAVE_TO_DRIVE: the VM dies mid-training (after the epoch-1 checkpoint), the working folder
    is wiped, and Run all again takes the code from Drive (no upload) and resumes at the saved step."""
    data = colab.drive / "MyDrive" / "mimir" / "dataset.csv"
    data.parent.mkdir(parents=True)
    write_fixture(data)
    colab.queue_uploads([user_files["zip"]])
    with colab.kernel(kill_at_step=100) as session:                            # 83 steps an epoch
        killed = session.run_all(DATA_SOURCE="drive", SAVE_TO_DRIVE=True)
    assert killed.error == "DeadKernelError", killed
    run_dir = colab.drive / "MyDrive" / "mimir" / "checkpoints" / f"colab_tiny_dataset_{mc.file_checksum(data)[:8]}"
    saved = mc.load_checkpoint(run_dir / "last.pt")
    assert saved["epoch"] == 1 and 0 < saved["step"] < 100               # the epoch-1 checkpoint
    colab.disconnect()
    with colab.kernel() as session:
        again = session.run_all(DATA_SOURCE="drive", SAVE_TO_DRIVE=True)      # no upload queued
    assert again.error is None, again
    seen_by_the_notebook = colab.content / "drive" / "MyDrive" / run_dir.relative_to(colab.drive / "MyDrive")
    assert f"resuming {seen_by_the_notebook} at step {saved['step']}" in again.text, again
    assert (colab.drive / "MyDrive" / "mimir" / "code" / "mimir-main" / "mimir_core.py").exists()
    final = mc.load_checkpoint(run_dir / "last.pt")
    steps = [int(line.split(",")[0]) for line in (run_dir / "history_steps.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, final["step"] + 1)) and final["step"] > 50
    assert (colab.downloads / f"{run_dir.name}_model.zip").exists()


def test_the_real_pairs_from_the_form(colab):
    """DATA_SOURCE real_pepnn with the code already in the working folder: the data step loads the shipped PDB
    pairs (no upload asked for) and describes them. Only the cells up to the data step run."""
    code = colab.content / "mimir"
    for name in repository_files():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, code / name)
    colab.queue_uploads()                                     # no file dialog may open
    with colab.kernel() as session:
        run = session.run_all(until="colab.plot_lengths(rows)", DATA_SOURCE="real_pepnn")
    assert run.error is None, run
    assert f"Mimir code: {code}" in run.text
    assert "26,761 rows: 25,000 background (label 0), 1,761 interacting (label 1) over 573 targets" in run.text, run
    assert "most rows: C485 (93)" in run.text and no_flags(run.text)


# --- the notebook's file: runtime, REPO_URL ---------------------------------------------------------


def test_notebook_asks_for_a_t4_gpu_runtime():
    meta = json.loads(NOTEBOOK.read_text())["metadata"]
    assert meta["accelerator"] == "GPU" and meta["colab"]["gpuType"] == "T4"


def colab_link_problem(repo_url: str, readme: str):
    """None when the README's "Open in Colab" links open this notebook from the repository REPO_URL names
    (or, with REPO_URL empty, when there is no such link); else what to write."""
    links = re.findall(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/[\w/.-]+", readme)
    if not repo_url:
        return f"REPO_URL is empty, yet the README links to {links[0]}" if links else None
    repo = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(\.git)?/?", repo_url)
    if not repo:
        return f"REPO_URL {repo_url} is not a GitHub repository URL (https://github.com/<owner>/<repo>)"
    expected = f"https://colab.research.google.com/github/{repo.group(1)}/blob/main/notebooks/train_colab.ipynb"
    if not links or any(link != expected for link in links):
        return f"the README's Open in Colab link must be {expected}"
    return None


def test_readme_open_in_colab_link_and_notebook_repo_url_agree():
    """REPO_URL lives in the notebook's Settings; the README's "Open in Colab" link names the same repository.
    Publishing the repository: set REPO_URL, and this test says the link to write."""
    settings = next(c.source for c in jupytext.read(ROOT / "notebooks" / "train_colab.py").cells
                    if "# @title Settings" in c.source)
    repo_url = re.search(r'^REPO_URL = "([^"]*)"', settings, re.M).group(1)
    readme = (ROOT / "README.md").read_text()
    assert colab_link_problem(repo_url, readme) is None, colab_link_problem(repo_url, readme)
    assert "REPO_URL" in readme
    link = "[Open in Colab](https://colab.research.google.com/github/acme/mimir/blob/main/notebooks/train_colab.ipynb)"
    assert colab_link_problem("https://github.com/acme/mimir.git", link) is None
    assert colab_link_problem("https://github.com/acme/mimir", link) is None
    assert "github/other/mimir/blob/main" in colab_link_problem("https://github.com/other/mimir", link)
    assert "must be" in colab_link_problem("https://github.com/acme/mimir", "no link")
    assert "REPO_URL is empty" in colab_link_problem("", link)


# --- the mechanisms behind it, directly ---------------------------------------------------------------


def tiny(data, **kw):
    return mc.make_config("tiny", data=str(data), **kw)


def test_a_run_knows_its_data_and_continues_only_on_them(fixture_csv, tmp_path):
    run = tmp_path / "run"
    mc.train(tiny(fixture_csv, max_steps=5), run, progress=False)
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["data"] == str(fixture_csv) and stats["data_sha256"] == mc.file_checksum(fixture_csv)
    assert stats["skip_invalid"] is False
    moved = tmp_path / "elsewhere" / "copy.csv"                 # the same data at another path: fine
    moved.parent.mkdir()
    shutil.copy(fixture_csv, moved)
    assert mc.train(tiny(moved, max_steps=8), run, resume=True, progress=False)["step"] == 8
    other = write_fixture(tmp_path / "other.csv", seed=1)      # same targets, other rows
    with pytest.raises(mc.DataError, match=r"trained on .*data\.csv.*holds other data.*another run name \(--run-name\)"):
        mc.train(tiny(other, max_steps=12), run, resume=True, progress=False)
    assert mimir_colab.run_name_for("small", "") == "colab_small_demo"
    assert mimir_colab.run_name_for("small", "", references=4) == "colab_small_demo_refs4"     # never the id-only run
    names = {mimir_colab.run_name_for("small", str(path)) for path in (fixture_csv, moved, other)}
    assert names == {f"colab_small_data_{mc.file_checksum(fixture_csv)[:8]}", f"colab_small_copy_{mc.file_checksum(moved)[:8]}",
                     f"colab_small_other_{mc.file_checksum(other)[:8]}"}


def test_real_pairs_source_is_the_shipped_file(tmp_path, monkeypatch, capsys):
    """DATA_SOURCE real_pepnn: the shipped PDB pairs (data/pepnn), in Colab or not, with a run name of its own;
    training on them warns that targets whose only peptide fell in the held-out split cannot be learned."""
    settings = next(c.source for c in jupytext.read(ROOT / "notebooks" / "train_colab.py").cells
                    if "# @title Settings" in c.source)
    assert re.search(r'^DATA_SOURCE = "demo"  # @param \["demo", "real_pepnn", "upload", "drive"\]$', settings, re.M)
    for in_colab in (True, False):
        path = mimir_colab.data_path("real_pepnn", "mimir/dataset.csv", False, tmp_path / "uploads", tmp_path / "drive",
                                     in_colab)
        assert path == str(mc.REAL_DATA) == str(ROOT / "data" / "pepnn" / "dataset.csv.gz") and Path(path).is_file()
    assert not (tmp_path / "uploads").exists()
    assert mimir_colab.run_name_for("small", path) == "colab_small_real_pepnn"
    copy = tmp_path / "dataset.csv.gz"                          # the same file uploaded: named like any upload
    shutil.copy(path, copy)
    assert mimir_colab.run_name_for("small", str(copy)) == f"colab_small_dataset_{mc.file_checksum(copy)[:8]}"
    rows = mc.load_rows(path)
    assert len(set(rows.targets) - {""}) == 573
    mc.split_for_training(rows, mc.make_config("small").val_fraction)
    assert "target(s) have no training rows" in capsys.readouterr().err
    with pytest.raises(mc.DataError, match="not one of demo, real_pepnn, upload, drive"):
        mimir_colab.data_path("pepnn", "", False, tmp_path, tmp_path, True)
    monkeypatch.setattr(mimir_colab, "REAL_DATA", tmp_path / "gone.csv.gz")
    with pytest.raises(mc.DataError, match="missing from this copy of the Mimir code; fetch the code again"):
        mimir_colab.data_path("real_pepnn", "", False, tmp_path, tmp_path, True)


def test_an_upload_is_kept_from_its_bytes(tmp_path):
    """Colab saves a second 'data.csv' as 'data (1).csv' but returns it as 'data.csv': the bytes count."""
    folder = tmp_path / "uploads"
    first = mimir_colab.keep_upload({"data.csv": b"label,target,sequence\n"}, folder)
    second = mimir_colab.keep_upload({"data.csv": b"label,target,sequence\n0,,ACDEFG\n"}, folder)
    assert first == second == folder / "data.csv" and second.read_bytes().endswith(b"ACDEFG\n")
    third = mimir_colab.keep_upload({"other.csv.gz": b"x"}, folder)
    assert sorted(folder.iterdir()) == [third]                  # one kept file: the last one given
    with pytest.raises(mc.DataError, match="no file was uploaded"):
        mimir_colab.keep_upload({}, folder)
    with pytest.raises(mc.DataError, match="2 files were uploaded .*upload one CSV file"):
        mimir_colab.keep_upload({"a.csv": b"", "b.csv": b""}, folder)


def test_warmup_fits_the_runs_length_and_a_short_run_says_so(fixture_csv, tmp_path, capsys):
    small = mc.make_config("small")                           # warm-up 500
    assert mc.warmup_steps(small, 100_000) == 500
    lrs = [mc.lr_at(s, small, 440) for s in range(440)]        # a 6,000-row file at 20 epochs: 440 steps
    assert mc.warmup_steps(small, 440) == 44 and lrs[43] == max(lrs) == 1.0
    assert all(a >= b for a, b in zip(lrs[43:], lrs[44:])) and lrs[-1] < 0.11
    mc.Trainer(tiny(fixture_csv, max_steps=10), tmp_path / "short")
    note = capsys.readouterr().err
    assert "only 10 steps" in note and "warm-up of 20 steps" in note and "learn little" in note and "--epochs" in note
    mc.Trainer(tiny(fixture_csv, epochs=2), tmp_path / "long")  # 72 steps: longer than the warm-up
    assert "learn little" not in capsys.readouterr().err


def test_an_unreadable_checkpoint_is_named_and_best_pt_offered(fixture_csv, tmp_path):
    run = tmp_path / "run"
    mc.train(tiny(fixture_csv), run, progress=False)            # 2 epochs; best.pt at an epoch end
    best_step = mc.load_checkpoint(run / "best.pt")["step"]
    good = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(good[: len(good) // 3])        # a copy to Drive cut short
    with pytest.raises(mc.DataError) as err:
        mc.Trainer(tiny(fixture_csv, epochs=3), run, resume=True)
    msg = str(err.value)
    assert "last.pt: not a readable Mimir checkpoint" in msg
    assert f"best.pt beside it is intact (step {best_step}" in msg and "delete or rename last.pt and run again" in msg
    (run / "last.pt").unlink()                                   # the offered way out
    trainer = mc.Trainer(tiny(fixture_csv, epochs=3), run, resume=True)
    assert trainer.step == best_step
    (run / "best.pt").write_bytes(good[:100])
    with pytest.raises(mc.DataError, match=r"no intact best\.pt to fall back on: choose another run name"):
        mc.Trainer(tiny(fixture_csv, epochs=3), run, resume=True)


def test_messages_speak_the_interface_in_use(tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,target,sequence\n2,,ACDEFGH\n0,,ACD\n1,,KLMNPQ\n")
    with pytest.raises(mc.DataError, match="pass --skip-invalid"):
        mc.load_rows(bad)
    monkeypatch.setattr(mc, "INTERFACE", "notebook")
    with pytest.raises(mc.DataError) as err:
        mc.load_rows(bad)
    assert "tick SKIP_INVALID in the Settings" in str(err.value) and "--" not in str(err.value)
    assert all(set(words) == {"cli", "notebook"} for words in mc.CONTROLS.values())


def test_problem_kinds_keep_their_fixed_words(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,target,sequence\n2,,ACDEFGH\n3,,ACDEFGH\n0,,ACD\n0,,ACDEFGHIKLMNPQRSTVWYA\n0,,ACDXFG9\n"
                   "0,,KLMNPQ\n0,,KLMNPQ\n")
    summary = mc.summarize_problems(bad, mc.check_rows(bad)[1])
    for kind in ("2 x label '...' is not 0 or 1", "2 x length N outside 4-20", "1 x '...' at position N is not a residue letter",
                 "1 x duplicate of line N"):
        assert f"  {kind}\n" in summary + "\n", summary
    assert "line 2: label '2' is not 0 or 1" in summary and "line 4: length 3 outside 4-20" in summary


def test_medium_and_large_need_a_gpu_or_an_explicit_go_ahead(monkeypatch):
    mc.require_gpu("small", device="cpu")
    mc.require_gpu("large", allow_cpu=True, device="cpu")
    with pytest.raises(mc.DataError, match=r"no GPU: the medium preset would train for hours.*pass --device cpu"):
        mc.require_gpu("medium", device="cpu")
    monkeypatch.setattr(mc, "INTERFACE", "notebook")
    with pytest.raises(mc.DataError, match="tick ALLOW_CPU in the Settings"):
        mc.require_gpu("large", device="cpu")


def test_command_line_asks_for_device_cpu_before_hours_on_a_cpu(fixture_csv, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "mimir_core.py"), "train", "--preset", "medium", "--data",
                           str(fixture_csv), "--checkpoint-dir", str(tmp_path / "runs")], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 2 and "the medium preset would train for hours" in proc.stderr
    assert "pass --device cpu" in proc.stderr and not (tmp_path / "runs").exists()


def test_run_time_estimate_after_the_first_steps(fixture_csv, tmp_path, capsys):
    mc.train(tiny(fixture_csv, max_steps=70, label1_repeat=1), tmp_path / "run", progress=False)   # 36 steps an epoch
    assert re.search(r"\d+ ms a step: the remaining 42 steps take about \d+ s", capsys.readouterr().err)
    assert [mc.format_duration(s) for s in (40, 720, 7500)] == ["40 s", "12 min", "2 h 05 min"]


def test_model_file_is_small_and_generates_like_the_run(trained_run, tmp_path):
    trained_run = Path(shutil.copytree(trained_run, tmp_path / "run"))     # the shared run stays as it is
    model_file = mc.export_model(trained_run)
    assert model_file.stat().st_size < 0.5 * (trained_run / "last.pt").stat().st_size
    saved = torch.load(model_file, weights_only=True)
    assert "optimizer" not in saved and saved["stats"]["rows"] > 0
    assert saved["model"].keys() == mc.sampling_weights(mc.load_checkpoint(trained_run / "best.pt")).keys()
    alone = tmp_path / "elsewhere.pt"
    shutil.copy(model_file, alone)                               # the file on its own, far from its run
    kwargs = dict(n=8, target="P11111", min_length=8, max_length=12, seed=3, device="cpu")
    assert mc.generate(alone, **kwargs) == mc.generate(trained_run, **kwargs)
    archive = mimir_colab.zip_run(trained_run, checkpoints=False)
    names = zipfile.ZipFile(archive).namelist()
    assert f"{trained_run.name}/model.pt" in names and not any(n.endswith(("last.pt", "best.pt")) for n in names)
