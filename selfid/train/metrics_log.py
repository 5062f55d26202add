"""metrics.csv (one row per optimizer step) and tensorboard's event files, written by the main process."""

from __future__ import annotations

import csv
from pathlib import Path

CSV_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "label_tokens", "elapsed_s", "tokens_per_s"]
FORMATS = {"loss": ".6f", "lr": ".6g", "grad_norm": ".4f", "elapsed_s": ".2f", "tokens_per_s": ".0f"}


class MetricsLog:
    """A run's metrics.csv and tensorboard events (when tensorboard is installed); does nothing when not enabled.

    A resumed run (`resume_at`: the step it continues from) keeps the rows up to that step, so the file
    and its clock run on across sessions.
    """

    def __init__(self, output: Path, resume_at: int | None, enabled: bool):
        self.path = output / "metrics.csv"
        self.enabled = enabled
        self.earlier: list[dict] = []  # rows of the sessions before this one
        self.tb = None
        if not enabled:
            return
        if resume_at is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                self.earlier = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_at]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(self.earlier)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output / "tensorboard"))
        except ImportError:
            pass

    @property
    def last_loss(self) -> float | None:
        return float(self.earlier[-1]["loss"]) if self.earlier else None

    @property
    def elapsed_s(self) -> float:
        """Seconds trained in the sessions before this one."""
        return float(self.earlier[-1]["elapsed_s"]) if self.earlier else 0.0

    def write(self, rows: list[dict]) -> None:
        """Rows of CSV_FIELDS, as numbers."""
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            for row in rows:
                w.writerow({k: format(v, FORMATS.get(k, "")) for k, v in row.items()})
                if self.tb is not None:
                    for name in ("loss", "lr", "grad_norm"):
                        self.tb.add_scalar(f"train/{name}", row[name], row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
