"""Issue 11: where the ENAS search's memory goes (WORKSPACE §6.3).

Usage (from the project root):

  python -m benchmarks.mem_probe compiled --hidden=1000
      XLA's memory analysis of the search's training step and Fisher update
      (jitted and donated as `enas_setup.jit_steps` does), with the node
      update's hand-written VJP (shipped) and with autodiff of its formula
  python -m benchmarks.mem_probe save --gb=1
      RSS during a checkpoint save of a 1.58 GB state (three [66, 1000,
      2000] float32 arrays, the paper-size params / Fisher / anchor) with
      `wpl_jax.runtime.checkpoint.Checkpointer`; --gb=0 uses orbax's default
      staging instead of the shipped limit
  python -m benchmarks.mem_probe rss -- python main.py ...
      runs the command and samples its VmRSS / VmHWM from /proc every
      second: prints the timeline (one line per 5 s) and the peak
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import threading
import time


def _status_kb(pid: int | str, key: str) -> int:
  for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith(key + ":"):
      return int(line.split()[1])
  return 0


def compiled(hidden: int) -> None:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from benchmarks import enas_bench  # noqa: PLC0415
  from wpl_jax.enas import supernet

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = hidden, 12
  c.wpl.estimator = "batch_grad_squared"
  s = enas_bench.setup(c)
  arch = jax.tree.map(lambda x: x[0], s["archs"])
  st, key = s["steps"], s["key"]
  batch = (arch, s["inputs"], s["targets"], s["hidden"])
  hand = supernet.highway
  for name, highway in (
    ("hand-written VJP", hand),
    ("autodiff", lambda z, h, a: supernet.highway_parts(z, h, a)[0]),
  ):
    supernet.highway = highway
    step = jax.jit(st.shared_step, donate_argnums=(0,)).lower(
      s["shared"], s["wpl"], *batch, jnp.float32(0.1), jnp.float32(1), key=key
    )
    fisher = jax.jit(st.fisher_step, donate_argnums=(1,)).lower(
      s["shared"], s["wpl"], *batch, jnp.float32(2), key=key
    )
    for what, lowered in (("training step", step), ("Fisher update", fisher)):
      m = lowered.compile().memory_analysis()
      print(
        f"H={hidden} {what}, {name}: temporary "
        f"{m.temp_size_in_bytes / 1e6:.0f} MB, arguments "
        f"{m.argument_size_in_bytes / 1e6:.0f} MB, outputs "
        f"{m.output_size_in_bytes / 1e6:.0f} MB (aliased "
        f"{m.alias_size_in_bytes / 1e6:.0f} MB)",
        flush=True,
      )
  supernet.highway = hand


def save(gb: float) -> None:
  import jax  # noqa: PLC0415
  import orbax.checkpoint as ocp  # noqa: PLC0415

  from wpl_jax.runtime import checkpoint  # noqa: PLC0415

  state = {
    f"x{i}": jax.random.normal(jax.random.key(i), (66, 1000, 2000))
    for i in range(3)
  }
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as d:
    ckpt = checkpoint.Checkpointer(pathlib.Path(d) / "ckpt")
    if not gb:  # orbax's default staging (all of the state at once)
      ckpt._manager = ocp.CheckpointManager(
        ckpt.directory,
        options=ckpt._options,
      )
    time.sleep(1.0)  # let the allocator settle after the draws
    before = _status_kb("self", "VmRSS")
    peak, done = [before], threading.Event()

    def sample():
      while not done.is_set():
        peak[0] = max(peak[0], _status_kb("self", "VmRSS"))
        time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    ckpt.save(0, state, {"step": 0})
    took = time.perf_counter() - t0
    done.set()
    t.join()
  print(
    f"save of 1.58 GB, staging {'orbax default' if not gb else f'{gb} GB'}: "
    f"RSS before {before / 1e6:.2f} GB, peak during the save "
    f"{peak[0] / 1e6:.2f} GB (+{(peak[0] - before) / 1e6:.2f}), {took:.1f} s"
  )


def rss(cmd: list[str]) -> None:
  p = subprocess.Popen(cmd)
  t0, last, peak = time.time(), -5.0, 0
  while p.poll() is None:
    try:
      now, hwm = _status_kb(p.pid, "VmRSS"), _status_kb(p.pid, "VmHWM")
    except (FileNotFoundError, ProcessLookupError):
      break
    peak = max(peak, hwm)
    if time.time() - last >= 5.0:
      last = time.time()
      print(
        f"[rss] {last - t0:6.0f} s  RSS {now / 1e6:.2f} GB  "
        f"peak {hwm / 1e6:.2f} GB",
        file=sys.stderr,
        flush=True,
      )
    time.sleep(1.0)
  p.wait()
  print(f"[rss] exit {p.returncode}, peak RSS {peak / 1e6:.2f} GB")
  if p.returncode:
    sys.exit(p.returncode)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("what", choices=("compiled", "save", "rss"))
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--gb", type=float, default=1.0)
  args, rest = ap.parse_known_args()
  if args.what == "compiled":
    compiled(args.hidden)
  elif args.what == "save":
    save(args.gb)
  else:
    cmd = rest[1:] if rest[:1] == ["--"] else rest
    if not cmd:
      ap.error("rss needs a command after --")
    rss(cmd)


if __name__ == "__main__":
  main()
