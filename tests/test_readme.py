"""The README's two set-up commands are the ones CI and users run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for b in blocks[:2] for line in b.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_test_one():
    install_and_train, install_and_test = readme_commands()
    assert "pip install torch==2.13.0 -r requirements.txt" in install_and_train
    assert install_and_train.endswith("scripts/train.py --preset small --run-name small_test -v")
    assert install_and_test.endswith("-m pytest")
    assert install_and_test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_requirements_leave_colab_torch_alone():
    reqs = (ROOT / "requirements.txt").read_text()
    torch_line = next(line for line in reqs.splitlines() if line.startswith("torch"))
    assert "==" not in torch_line and ">=" in torch_line        # a range, never a pinned reinstall
    for pkg in ("numpy", "matplotlib", "tqdm", "jupytext", "nbmake", "pytest"):
        assert pkg in reqs
