"""Metrics (``metrics.jsonl``, optional tensorboard / wandb) and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainers.config import METRICS_FILE, TrainConfig, config_to_dict


class MetricsLogger:
    """Appends ``{"step": k, **metrics}`` lines to OUT/metrics.jsonl (flushed each time), and to
    TensorBoard or wandb when ``config.log_with`` asks and the package is installed. Resuming from step
    K first drops the lines after K, so the file holds one consistent curve. With several processes
    pass ``main=accelerator.is_main_process``: the other ranks' loggers write nothing (their metrics are
    already reduced across ranks by the trainer)."""

    def __init__(self, out: str | Path, config: TrainConfig, resume_step: int = 0, main: bool = True):
        self.path = Path(out) / METRICS_FILE
        self._file = self._tensorboard = self._wandb = None
        if not main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")
        if config.log_with == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tensorboard = SummaryWriter(str(Path(out) / "tensorboard"))
        elif config.log_with == "wandb":
            import wandb

            self._wandb = wandb.init(config=config_to_dict(config), dir=str(out), resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:  # not the main process
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                if self._tensorboard is not None:
                    self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The records of OUT/metrics.jsonl, in order."""
    path = Path(out) / METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def progress_bar(total: int, initial: int = 0, desc: str = "train", quiet: bool = False):
    """A tqdm bar over optimizer steps (rate and ETA shown; set postfix for loss / tokens per second)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=quiet, dynamic_ncols=True)
