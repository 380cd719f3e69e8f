"""Per-epoch training log: one flushed line per epoch, a JSON history and ``progress.png``."""
from __future__ import annotations

import os
import sys
import time

from osmedseg.utilities.atomic import atomic_path, save_json_atomic


class RunLog:
    """Keeps the loss history of one stage and writes it as text, JSON and a plot."""

    def __init__(self, folder: str, total_epochs: int, history: dict | None = None, enabled: bool = True):
        self.enabled = enabled  # False on non-zero DDP ranks: nothing is written
        self.folder = folder
        self.total_epochs = total_epochs
        self.history: dict[str, list[float]] = history or {}
        self.text_path = os.path.join(folder, "training_log.txt")

    def message(self, text: str) -> None:
        """Append a line to the log file and print it (flushed, so cluster logs show progress)."""
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        with open(self.text_path, "a") as f:
            f.write(line + "\n")
        print(line, flush=True, file=sys.stdout)

    def end_epoch(self, epoch: int, values: dict[str, float], seconds: float, iterations: int) -> None:
        """Record one epoch's averaged values and log a line with speed and ETA."""
        for key, value in values.items():
            self.history.setdefault(key, []).append(float(value))
        self.history.setdefault("epoch_seconds", []).append(seconds)
        remaining = (self.total_epochs - epoch - 1) * seconds
        parts = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        self.message(f"epoch {epoch + 1}/{self.total_epochs} {parts} | {seconds:.1f} s "
                     f"({iterations / max(seconds, 1e-9):.2f} it/s) | ETA {remaining / 60:.1f} min")
        save_json_atomic(self.history, os.path.join(self.folder, "history.json"))
        self.plot()

    def plot(self) -> None:
        """Write ``progress.png``: every logged curve against the epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        curves = {k: v for k, v in self.history.items() if k != "epoch_seconds"}
        fig, (ax_loss, ax_time) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        for key, values in curves.items():
            ax_loss.plot(range(1, len(values) + 1), values, label=key)
        ax_loss.set_ylabel("value")
        ax_loss.legend(fontsize=8)
        ax_loss.grid(alpha=0.3)
        seconds = self.history.get("epoch_seconds", [])
        ax_time.plot(range(1, len(seconds) + 1), seconds, color="gray")
        ax_time.set_xlabel("epoch")
        ax_time.set_ylabel("seconds per epoch")
        fig.tight_layout()
        with atomic_path(os.path.join(self.folder, "progress.png")) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
