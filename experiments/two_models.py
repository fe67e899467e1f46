"""Two-model study (paper §4.1): does WPL stop B from making A forget?

Run commands (from the project root):

  python main.py                      # digits, ~3 min on an idle 2-core CPU
  python main.py --config=experiments/two_models.py:smoke        # seconds
  python main.py --config=experiments/two_models.py:mnist \
      --data_dir=../shared/data/mnist  # MNIST, 20 min CPU time (2 cores)
  python main.py --config=experiments/two_models.py:smoke_mnist \
      --data_dir=../shared/data/mnist
  # Regime without forgetting (Adam 1e-3 for B; plain SGD makes WPL diverge):
  python main.py --config=experiments/two_models.py:mnist \
      --data_dir=../shared/data/mnist --config.opt_b.lr=1e-3

Each run writes metrics.jsonl, results.md, results.json and figure.png to
--workdir and prints the headline table. Expected result (measured tables in
experiments/two_models_results.md, 3 seeds):
- digits (B: Adam 1e-3): A's drop after 1500 iterations of B grows with k,
  converged A 0.973 -> 0.954 / 0.938 / 0.915 (k = 1 / 2 / 3), weak A 0.418 ->
  0.357 / 0.318 / 0.229; WPL (alpha = 10) keeps the converged A at 0.973-0.974
  and the weak A at 0.39-0.42, B within 0.01 (converged) / 0.04 (weak) of
  plain; the uniform pull (l2) does as well.
- mnist (B: Adam 1e-2, the forgetting regime; SGD 0.01-0.1 and Adam 1e-3
  cause little or none on MNIST): converged A 0.975 -> 0.83-0.91 without WPL,
  0.971-0.975 with WPL alpha = 10 (any estimator), B 0.95 vs 0.97; weak A
  0.685 -> 0.23-0.34 without, 0.64-0.67 with WPL, B 0.95 vs 0.89-0.92.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Two-model config; `arg`: None (digits), mnist, smoke, smoke_mnist."""
  arg = arg or "digits"
  if arg not in ("digits", "mnist", "smoke", "smoke_mnist"):
    raise ValueError(
      f"unknown variant {arg!r} of two_models; use digits, mnist, smoke or "
      "smoke_mnist"
    )
  c = ml_collections.ConfigDict()
  c.experiment = "two_models"  # Dispatch key of main.py.
  c.seed = 0  # Seeds seed .. seed + num_seeds - 1; A, B, data each fold it.
  # Matmul precision: "float32" (exact), "tf32", "bf16" or "default" (the
  # platform's); wpl_jax/runtime/platform_defaults.py. Not resumable.
  c.precision = "float32"
  c.num_seeds = 3  # Every number is mean ± std over this many seeds.
  c.data_dir = ""  # Folder with the 4 MNIST IDX .gz files (--data_dir sets it).
  c.num_devices = 0  # Local devices each batch is split over (0 = all).

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # "digits" (sklearn 8×8, bundled) or "mnist".
  c.data.test_fraction = 0.2  # digits only: held-out share of the 1797 images.
  c.data.split_seed = 0  # digits only: seed of the train/test split.

  c.model = ml_collections.ConfigDict()
  c.model.width = 64  # Units of every hidden layer (the paper gives none).
  c.model.depth_a = 4  # Hidden layers of A (paper: 4 + classifier).
  c.model.depth_b = 6  # Hidden layers of B (paper: 6 + classifier).

  c.opt_a = ml_collections.ConfigDict()
  c.opt_a.name = "adam"  # Optimiser of A: sgd, momentum (0.9) or adam.
  c.opt_a.lr = 1e-3  # Step size of A.

  c.opt_b = ml_collections.ConfigDict()
  c.opt_b.name = "adam"  # Optimiser of B; adam 1e-3 is the forgetting regime.
  c.opt_b.lr = 1e-3  # Step size of B (sgd 0.01: little forgetting).

  c.protocol = ml_collections.ConfigDict()
  c.protocol.shared_layers = (1, 2, 3)  # k: hidden layers B takes from A.
  c.protocol.a_settings = ("converged", "weak")  # Which A's B starts from.
  c.protocol.a_steps_converged = 1000  # Steps of A for the converged A.
  c.protocol.a_steps_weak = 10  # Weak A: the same run stopped this early.
  c.protocol.a_log_every = 500  # Log A's test accuracy every this many steps.
  c.protocol.b_steps = 1500  # Iterations of B (paper: 1500).
  c.protocol.eval_every = 50  # Test A and B every this many steps of B.
  c.protocol.early_step = 100  # Report A after this many steps (paper: 100).
  c.protocol.batch_size = 64  # Minibatch of A and B (uniform, with repl.).
  c.protocol.eval_examples = 0  # At most this many test examples (0 = all).
  # Checkpoint B every this many steps (a multiple of eval_every; 0 = only
  # at SIGTERM/SIGINT); A is checkpointed after every logged segment.
  c.protocol.checkpoint_every = 500

  c.variants = ("plain", "l2", "wpl")  # How B is trained (see wpl, l2).

  c.wpl = ml_collections.ConfigDict()
  c.wpl.alpha = 10.0  # Headline WPL strength (figure, headline table).
  c.wpl.alphas = (1.0, 10.0, 100.0)  # Sweep, for every estimator.
  c.wpl.estimator = "per_example"  # Headline Fisher estimator.

  c.l2 = ml_collections.ConfigDict()
  c.l2.strength = 10.0  # Headline uniform-pull strength (F = 1 on shared).
  c.l2.strengths = (1.0, 10.0, 100.0)  # Its sweep.

  c.fisher = ml_collections.ConfigDict()
  c.fisher.estimators = ("per_example", "batch_grad_squared", "sampled")
  c.fisher.num_examples = 1024  # A's training examples used for F.
  c.fisher.batch_size = 64  # Minibatch of each estimate (matters for bgs).
  c.fisher.normalize = "mean"  # "mean": F /= mean over shared; or "none".

  if arg in ("mnist", "smoke_mnist"):
    c.data.name = "mnist"
    c.model.width = 128
    c.protocol.a_steps_converged = 3000
    c.protocol.a_steps_weak = 10
    c.protocol.a_log_every = 1000
    c.protocol.batch_size = 128
    c.protocol.eval_every = 100
    c.protocol.checkpoint_every = 1000
    # MNIST's forgetting regime for B (measured sweep, two_models_results.md):
    # sgd 0.01-0.1 and adam 1e-3 leave a converged A intact.
    c.opt_b.lr = 1e-2
    c.wpl.alphas = (1.0,)  # With alpha = 10: a 2-point sweep fits 2 CPUs.
    c.l2.strengths = (1.0,)
  if arg in ("smoke", "smoke_mnist"):
    c.num_seeds = 2
    c.model.width = 32
    c.protocol.shared_layers = (2,)
    c.protocol.a_steps_converged = 60
    c.protocol.a_steps_weak = 20
    c.protocol.a_log_every = 20  # Equal segments: A's chunk compiles once.
    c.protocol.b_steps = 40
    c.protocol.eval_every = 20
    c.protocol.checkpoint_every = 20
    c.protocol.early_step = 20
    c.protocol.batch_size = 32
    c.protocol.eval_examples = 500
    c.wpl.alphas = (100.0,)
    c.l2.strengths = ()
    c.fisher.estimators = ("per_example",)  # One compile, not three.
    c.fisher.num_examples = 64
    c.fisher.batch_size = 32
  return c
