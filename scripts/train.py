"""Quick start: `python scripts/train.py --preset small --run-name small_test -v` trains on the demo data.
Every flag of `python mimir_core.py train --help` works here; this file only forwards to it."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimir_core import main  # noqa: E402

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
