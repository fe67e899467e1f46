"""Experiment outputs: a JSONL metrics log, result tables and figures."""

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
  """Converts NumPy/JAX scalars and arrays to JSON-ready Python values."""
  if isinstance(value, Mapping):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [plain(v) for v in value]
  if hasattr(value, "tolist"):  # np.ndarray, np.generic, jax.Array
    return plain(np.asarray(value).tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def is_primary() -> bool:
  """Whether this process writes the workdir's logs, records and figures.

  In a multi-host run (`main.py --distributed`) every process runs the same
  loop; only process 0 writes (orbax coordinates the checkpoints itself).
  JAX is looked up, not imported: a process that has not imported it is
  the only one.
  """
  import sys  # noqa: PLC0415

  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


class JsonlWriter:
  """Appends one JSON object per line; flushes every write.

  Example:
    with JsonlWriter(workdir / "metrics.jsonl") as log:
      log.write({"step": 100, "acc_a": 0.91})
  """

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    # Processes other than the primary one write nowhere.
    target = self.path if is_primary() else os.devnull
    if target == self.path:
      drop_torn_tail(self.path)  # never glue a record onto a torn line
    self._file = open(target, "a", encoding="utf-8")  # noqa: SIM115

  def write(self, record: Mapping[str, Any]) -> None:
    """Writes `record` as one line."""
    self._file.write(json.dumps(plain(record), sort_keys=False) + "\n")
    self._file.flush()

  def close(self) -> None:
    """Closes the file."""
    self._file.close()

  def __enter__(self) -> "JsonlWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _warn(message: str) -> None:
  from absl import logging  # noqa: PLC0415 (absl is there whenever we run)

  logging.warning("%s", message)


def drop_torn_tail(path: str | pathlib.Path) -> bool:
  """Cuts a last line without its newline (what a crash mid-append leaves).

  Returns whether something was cut (one log line says so). A complete
  last line is kept even if it is not JSON: `read_jsonl` names it.
  """
  path = pathlib.Path(path)
  if not path.exists() or path.stat().st_size == 0:
    return False
  data = path.read_bytes()
  if data.endswith(b"\n"):
    return False
  keep = data[: data.rfind(b"\n") + 1]  # 0 when there is no newline at all
  with open(path, "r+b") as f:
    f.truncate(len(keep))
  _warn(
    f"{path}: dropped a torn last line ({len(data) - len(keep)} bytes, "
    "left by an interrupted write)"
  )
  return True


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads every record of a JSONL file (one JSON object per line).

  A last line that is not valid JSON is what a crash during an append
  leaves: it is skipped with one log line. Any other bad line raises.

  Raises:
    ValueError: a line other than the last is not a JSON object (one line
      naming the file and line number and what to do).
  """
  path = pathlib.Path(path)
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
  out = []
  for k, (i, line) in enumerate(lines):
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError as e:
      if k == len(lines) - 1:
        _warn(f"{path}: skipped its torn last line {i} ({e})")
        break
      raise ValueError(
        f"{path} line {i} is not a JSON record ({str(e).splitlines()[0]}); "
        "fix or delete that line, or use a new --workdir"
      ) from None
    out.append(record)
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and population std (ddof=0) of `values`."""
  arr = np.asarray(values, dtype=np.float64)
  return float(arr.mean()), float(arr.std())


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
  """'m ± s' of `values` with `digits` decimals."""
  m, s = mean_std(values)
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(
  rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
) -> str:
  """Renders `rows` as a Markdown table.

  Args:
    rows: one mapping per row.
    columns: (key, header) pairs; missing keys render as empty cells.

  Returns:
    The table, one line per row plus the header and the rule, no trailing
    newline; "|" inside a cell is escaped as "\\|".
  """
  lines = [
    "| " + " | ".join(h for _, h in columns) + " |",
    "|" + "|".join("---" for _ in columns) + "|",
  ]
  for row in rows:
    # A "|" inside a cell (e.g. a cell string "tanh|0:relu|1:tanh") would
    # split it: Markdown's escape keeps it one cell.
    cells = [str(row.get(key, "")).replace("|", "\\|") for key, _ in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_json(path: str | pathlib.Path, obj: Any) -> None:
  """Writes `obj` as indented JSON (on the primary process only)."""
  if not is_primary():
    return
  with open(path, "w", encoding="utf-8") as f:
    json.dump(plain(obj), f, indent=1)
    f.write("\n")


def plot_panels(
  panels: Sequence[Mapping[str, Any]],
  path: str | pathlib.Path,
  *,
  xlabel: str,
  ylabel: str,
  ncols: int = 3,
  ylim: tuple[float, float] | None = (0.0, 1.0),
) -> None:
  """Saves a grid of line plots (mean line, ±std band) as a PNG.

  Args:
    panels: each {"title": str, "curves": [curve, ...]} where a curve is
      {"label": str, "x": [T], "mean": [T], "std": [T], "color": str,
      "linestyle": str}; "std", "color" and "linestyle" are optional (the
      ±std band takes the line's colour). A panel may also hold "hlines":
      [(y, label, linestyle)] reference lines.
    path: output file (PNG).
    xlabel: x-axis label of every panel.
    ylabel: y-axis label of every panel.
    ncols: panels per row.
    ylim: y-axis range of every panel (accuracies by default); None lets
      each panel fit its data.
  """
  import matplotlib  # Imported here: only plotting needs it.

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ncols = max(1, min(ncols, len(panels)))
  nrows = math.ceil(len(panels) / ncols)
  fig, axes = plt.subplots(
    nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False
  )
  for ax, panel in zip(axes.flat, panels, strict=False):
    for curve in panel["curves"]:
      x = np.asarray(curve["x"])
      mean = np.asarray(curve["mean"])
      (line,) = ax.plot(
        x,
        mean,
        label=curve["label"],
        color=curve.get("color"),
        linestyle=curve.get("linestyle", "-"),
        linewidth=1.6,
      )
      if curve.get("std") is not None:
        std = np.asarray(curve["std"])
        ax.fill_between(
          x, mean - std, mean + std, color=line.get_color(), alpha=0.12
        )
    for y, label, style in panel.get("hlines", ()):
      ax.axhline(y, color="0.35", linestyle=style, linewidth=1.0, label=label)
    ax.set_title(panel["title"], fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
      ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels) :]:
    ax.axis("off")
  # One legend entry per label, over every panel (panels may differ).
  seen = {}
  for ax in axes.flat:
    for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
      if lab and not lab.startswith("_"):
        seen.setdefault(lab, h)
  handles, labels = list(seen.values()), list(seen)
  fig.legend(
    handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9
  )
  legend_rows = math.ceil(len(labels) / min(4, max(len(labels), 1)))
  fig.tight_layout(rect=(0, (0.06 + 0.07 * legend_rows) / nrows, 1, 1))
  if is_primary():
    fig.savefig(path, dpi=110)
  plt.close(fig)


def dumps_line(record: Mapping[str, Any]) -> str:
  """One JSONL line (with its newline) for `record`, as `JsonlWriter` writes."""
  return json.dumps(plain(record), sort_keys=False) + "\n"
