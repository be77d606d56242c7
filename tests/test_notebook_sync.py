"""The notebook and its jupytext twin are one notebook; the committed .ipynb carries no outputs.
(The notebook itself runs end to end under pytest through nbmake, in smoke mode.)"""
import json
from pathlib import Path

import jupytext

NB = Path(__file__).resolve().parents[1] / "notebooks"


def cells(notebook):
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_ipynb_and_py_twin_hold_the_same_cells():
    assert cells(jupytext.read(NB / "train_colab.ipynb")) == cells(jupytext.read(NB / "train_colab.py"))


def test_committed_notebook_has_no_outputs():
    raw = json.loads((NB / "train_colab.ipynb").read_text())
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_notebook_uses_colab_forms_and_guards_colab_calls():
    text = (NB / "train_colab.py").read_text()
    for field in ("PRESET", "DATA_SOURCE", "DRIVE_DATA_PATH", "RUN_NAME", "SAVE_TO_DRIVE", "EPOCHS"):
        assert f"\n{field} = " in text and "# @param" in text.split(f"\n{field} = ")[1].split("\n")[0]
    assert '# @param ["small", "medium", "large"]' in text
    # every google.colab import sits under a Colab guard
    for block in text.split("# %%")[1:]:
        if "from google.colab import" in block:
            assert "IN_COLAB" in block or "SAVE_TO_DRIVE" in block, block[:200]


def test_notebook_cells_are_short_and_call_mimir_core():
    nb = jupytext.read(NB / "train_colab.py")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert all(len(src.splitlines()) <= 40 for src in code)
    assert sum("mc." in src for src in code) >= 6
    assert not any("def " in src or "class " in src for src in code)     # no logic lives only in the notebook
