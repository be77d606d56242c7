# pytest also runs the notebook (nbmake): smoke mode makes it train the tiny preset on the demo data,
# so it finishes in minutes on a CPU. The kernel inherits this environment.
import os

os.environ["MIMIR_SMOKE"] = "1"
