"""ENAS search: the logs and results files of a run.

TensorBoard scalars of each epoch's record (if tensorboardX is installed),
the text of results.md, and the figure of the forgetting and reward curves
(also drawn by `wpl_jax.runtime.plots` from metrics.jsonl).
"""

from absl import logging

from wpl_jax.runtime import metrics as metrics_lib


def fmt(v):
  return "-" if v is None else f"{v:.3f}"


def tensorboard(path):
  if not metrics_lib.is_primary():  # multi-host: process 0 logs
    return None
  try:
    from tensorboardX import SummaryWriter  # Optional: only for TB logs.
  except ImportError:
    logging.warning("tensorboardX not installed: no TensorBoard logs")
    return None
  return SummaryWriter(str(path))


def tb_write(tb, record, epoch):
  if tb is None:
    return
  for k, v in record.items():
    if isinstance(v, (int, float)) and k != "epoch":
      tb.add_scalar(k, v, epoch)
  tb.flush()


def results_md(out, history) -> str:
  lines = [f"search: {out['search_seconds']:.0f} s; derived: {out['derived']}"]
  if history:
    last = history[-1]
    lines.append(
      f"last epoch {last['epoch']}: reward {fmt(last['reward'])}, "
      f"forgetting mean/best5/max {last['diff_mean']:.1f}/"
      f"{last['diff_best5']:.1f}/{last['diff_max']:.1f}"
    )
  rows = out.get("retrained", [])
  if rows:
    lines.append("")
    lines.append(
      metrics_lib.markdown_table(
        [
          {
            **r,
            "valid_ppl": f"{r['valid_ppl']:.2f}",
            "test_ppl": f"{r['test_ppl']:.2f}",
          }
          for r in rows
        ],
        [
          ("name", "run"),
          ("arch", "architecture"),
          ("valid_ppl", "valid ppl"),
          ("test_ppl", "test ppl"),
        ],
      )
    )
  return "\n".join(lines) + "\n"


def plot(history, path):
  if not history:
    return
  x = [h["epoch"] for h in history]
  panels = [
    {
      "title": t,
      "curves": [{"label": "run", "x": x, "mean": [h[k] for h in history]}],
    }
    for k, t in (
      ("diff_mean", "mean diff (ppl)"),
      ("diff_best5", "best-5 diff (ppl)"),
      ("diff_max", "max diff (ppl)"),
      ("reward", "controller reward"),
    )
    if all(h.get(k) is not None for h in history)
  ]
  metrics_lib.plot_panels(
    panels, path, xlabel="epoch", ylabel="", ncols=4, ylim=None
  )
