"""Thin wrapper around ``organdetr benchmark`` (the ablation runner, organdetr.experiments.ablation).

Usage (same flags as the CLI):
    .venv/bin/python benchmarks/run_ablation.py matching --iterations 150 --cases 12 --seeds 0,1

Writes benchmarks/results/<suite>/{table.md, results.json, convergence.png, runs/...}.
"""

from __future__ import annotations

import sys

from organdetr.cli import app

if __name__ == "__main__":
    sys.argv = ["organdetr", "benchmark", *sys.argv[1:]]
    app()
