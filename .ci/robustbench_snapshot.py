"""Write filterstats/zoo/data/robustbench_models.json from the installed RobustBench.

`filterstats zoo list` reads it when RobustBench is not installed. Run it in the zoo
environment (.ci/run_zoo.sh makes it; its pins give RobustBench 1.1.1):

    .venv-zoo/bin/python .ci/robustbench_snapshot.py

tests/zoo/test_robustbench_snapshot.py checks, in that environment, that the shipped
file equals the installed registry.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import sys
from pathlib import Path

from filterstats.zoo.robustbench import SNAPSHOT_FILE, registry_entries

TARGET = Path(__file__).resolve().parents[1] / "filterstats" / "zoo" / "data" / SNAPSHOT_FILE


def main() -> int:
    snapshot = {
        "robustbench_version": importlib.metadata.version("robustbench"),
        "date": datetime.date.today().isoformat(),
        "source": "robustbench.model_zoo.model_dicts, through filterstats.zoo.robustbench",
        "models": registry_entries(),
    }
    TARGET.write_text(json.dumps(snapshot, indent=1) + "\n", encoding="utf-8")
    print(f"{TARGET}: {len(snapshot['models'])} models of RobustBench {snapshot['robustbench_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
