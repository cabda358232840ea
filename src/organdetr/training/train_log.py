"""Training logs: CSV tables, TensorBoard scalars and a PNG of the loss / validation curves.

``RUN/train_log.csv``  one row per ``train.log_every`` optimizer steps: step, epoch, lr, loss terms
``RUN/val_log.csv``    one row per validation: step, epoch, mAP, AP50, AP75, mAR, ...
``RUN/tensorboard/``   the same scalars (``tensorboard --logdir RUN``)
``RUN/curves.png``     total loss and its terms, and validation mAP, against the step

CSV files are rewritten whole through ``organdetr.runtime.atomic`` (they are small), so a crash never leaves a
torn row; on resume, rows after the resumed step are dropped so the tables have no duplicates.
Only rank 0 logs.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from organdetr.runtime import atomic

TRAIN_CSV = "train_log.csv"
VAL_CSV = "val_log.csv"
CURVES_PNG = "curves.png"
FLUSH_SECONDS = 30.0  # the training CSV is rewritten at most this often (and at every validation / the end)


def _read_rows(path: Path, max_step: int | None) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    parsed = []
    for row in rows:
        values = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
        for key in ("step", "epoch"):
            if values.get(key) is not None:
                values[key] = int(values[key])
        if max_step is None or (values.get("step") or 0) <= max_step:
            parsed.append(values)
    return parsed


def _write_rows(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic.write_text(path, buf.getvalue())


class TrainLogger:
    """CSV + TensorBoard logger for one run folder; a no-op object when ``enabled`` is False (ranks > 0)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        resumed = enabled and resume_step is not None  # a fresh run starts fresh tables
        self.train_rows = _read_rows(self.run_dir / TRAIN_CSV, resume_step) if resumed else []
        self.val_rows = _read_rows(self.run_dir / VAL_CSV, resume_step) if resumed else []
        self._tb = None
        self._last_write = 0.0
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is a declared dependency; tolerate a stripped install
                self._tb = None

    def log_train(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """Append one training row (loss terms, lr, ...)."""
        if not self.enabled:
            return
        self.train_rows.append({"step": step, "epoch": epoch, **values})
        if time.monotonic() - self._last_write > FLUSH_SECONDS:
            self.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"train/{key}", value, step)

    def flush(self) -> None:
        """Rewrite the training CSV now (``log_train`` does so at most every ``FLUSH_SECONDS``)."""
        if self.enabled and self.train_rows:
            _write_rows(self.run_dir / TRAIN_CSV, self.train_rows)
        self._last_write = time.monotonic()

    def log_val(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """Append one validation row (mAP, AP50, ...)."""
        if not self.enabled:
            return
        self.val_rows.append({"step": step, "epoch": epoch, **metrics})
        self.flush()
        _write_rows(self.run_dir / VAL_CSV, self.val_rows)
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"val/{key}", value, step)

    def plot(self) -> Path | None:
        """Write ``curves.png``: loss terms (log scale) and validation mAP against the step."""
        if not self.enabled or not self.train_rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.train_rows]
        terms = [k for k in self.train_rows[-1] if k.startswith("loss") and not k[-1].isdigit()]
        ncols = 2 if self.val_rows else 1
        fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
        ax = axes[0, 0]
        for key in terms:
            ys = [r.get(key) for r in self.train_rows]
            ax.plot(steps, ys, label=key, linewidth=2.0 if key == "loss" else 1.0)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("weighted loss")
        ax.set_title("training loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        if self.val_rows:
            ax = axes[0, 1]
            vsteps = [r["step"] for r in self.val_rows]
            for key in ("mAP", "AP50", "AP75"):
                if any(r.get(key) is not None for r in self.val_rows):
                    ax.plot(vsteps, [r.get(key) for r in self.val_rows], marker="o", label=key)
            ax.set_ylim(0, 1)
            ax.set_xlabel("step")
            ax.set_title("validation")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        return atomic.write_figure(fig, self.run_dir / CURVES_PNG, dpi=100)

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


__all__ = ["CURVES_PNG", "TRAIN_CSV", "VAL_CSV", "TrainLogger"]
