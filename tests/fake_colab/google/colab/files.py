"""google.colab.files: upload() and download(), as Colab's do them (see __init__.py)."""
import json
import os
import shutil
from pathlib import Path


def _unique_filename(filename):
    """Colab's rule: a second upload of a name is saved as 'name (1).ext'."""
    if not os.path.lexists(filename):
        return filename
    path, ext = os.path.splitext(filename)
    counter = 1
    while os.path.lexists(f"{path} ({counter}){ext}"):
        counter += 1
    return f"{path} ({counter}){ext}"


def upload():
    """Saves the picked files in the working directory (a name already there gets ' (1)') and returns
    {original name: bytes}, as Colab does; {} when the user cancels."""
    queue_file = Path(os.environ["FAKE_COLAB_UPLOADS"])
    queue = json.loads(queue_file.read_text()) if queue_file.exists() else []
    if not queue:
        raise RuntimeError("fake Colab: the notebook asked for an upload, and the test queued none")
    picked, rest = queue[0], queue[1:]
    queue_file.write_text(json.dumps(rest))
    uploaded = {}
    for source in picked:
        name, data = os.path.basename(source), Path(source).read_bytes()
        local = _unique_filename(name)
        print(f"Saving {name} to {local}")
        with open(local, "ab") as f:
            f.write(data)
        uploaded[name] = data
    return uploaded


def download(filename):
    """Sends the file to the user's computer (the FAKE_COLAB_DOWNLOADS folder)."""
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Cannot find file: {filename}")
    target = Path(os.environ["FAKE_COLAB_DOWNLOADS"])
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(filename, target / os.path.basename(filename))
