"""Pure, jit-once step functions of the ENAS search (shared, WPL, controller).

Every function takes the architecture as data, so each is compiled once per
search whatever architectures are sampled (the architecture is data,
docs/method.md §4). The caller owns `jax.jit` (`setup.jit_steps`); the
states they take and the config's choices they read are in `setup`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from wpl_jax import fisher as fisher_lib
from wpl_jax import fisher_fast, tapped_grad
from wpl_jax.enas import controller as controller_lib
from wpl_jax.enas import edge_fisher, losses, sampler, search_space, supernet
from wpl_jax.enas import wpl as enas_wpl
from wpl_jax.enas.search_space import Arch
from wpl_jax.enas.train import setup
from wpl_jax.enas.train.setup import ControllerState, SharedState
from wpl_jax.runtime import platform_defaults
from wpl_jax.types import Array, Params, PRNGKey


@dataclasses.dataclass(frozen=True)
class Steps:
  """The search's step functions, bound to a model and config.

  Attributes:
    model: the shared RNN.
    config: the experiment config (read at trace time only).
  """

  model: supernet.SharedRNN
  config: ml_collections.ConfigDict
  # Overrides `config.search.eval_vmap` when not None (the search sets 0
  # when its devices split the K archs of an evaluation between them).
  eval_vmap: int | None = None

  # -- forward helpers -------------------------------------------------------

  def train_forward(
    self,
    params,
    batch_stats,
    inputs,
    hidden,
    arch,
    key,
    decode=True,
    tap=fisher_fast.PLAIN,
    edges=None,
  ):
    variables = {"params": params, "batch_stats": batch_stats}
    (logits, new_hidden), mutated = self.model.apply(
      variables,
      inputs,
      hidden,
      arch,
      train=True,
      decode=decode,
      tap=tap,
      edges=edges,
      rngs={"dropout": key},
      mutable=["batch_stats"],
    )
    return logits, new_hidden, mutated.get("batch_stats", batch_stats)

  def train_ce(
    self,
    params,
    batch_stats,
    inputs,
    targets,
    hidden,
    arch,
    key,
    tap=fisher_fast.PLAIN,
    edges=None,
  ):
    """Training-mode mean token cross-entropy, new hidden and batch stats.

    With `config.model.ce_chunk` > 0 the decoder runs in chunks of that
    many tokens (`losses.chunked_cross_entropy`, same value).
    """
    chunk = self.config.model.ce_chunk
    out, new_hidden, new_stats = self.train_forward(
      params,
      batch_stats,
      inputs,
      hidden,
      arch,
      key,
      decode=not chunk,
      tap=tap,
      edges=edges,
    )
    if chunk:
      ce = losses.chunked_cross_entropy(
        params, out, targets, chunk=chunk, matmul_dtype=self.model.matmul_dtype
      )
    else:
      ce = losses.cross_entropy(out, targets)
    return ce, new_hidden, new_stats

  def _eval_forward(self, params, batch_stats, inputs, hidden, arch):
    variables = {"params": params, "batch_stats": batch_stats}
    return self.model.apply(variables, inputs, hidden, arch, train=False)

  # -- shared training -------------------------------------------------------

  def shared_step(
    self,
    shared: SharedState,
    wpl_state: fisher_lib.FisherState,
    arch: Arch,
    inputs_TxB: Array,
    targets_TxB: Array,
    hidden_BxH: Array,
    lr: Array,
    wpl_alpha: Array,
    *,
    key: PRNGKey,
  ) -> tuple[SharedState, Array, dict[str, Array]]:
    """One SGD step of the child `arch` on one training batch.

    Loss = mean token cross-entropy + WPL penalty on the arch's edges
    (`wpl_alpha` = 1 in reference mode, where α lives in F; α(epoch) in
    clean mode; 0 when WPL is off).

    Returns:
      `(shared, new_hidden, metrics)`; metrics hold "loss" (cross-entropy,
      nats/token) and "wpl" (the penalty).
    """
    use_wpl = self.config.wpl.enabled

    def loss_fn(params, edges=None, tap=fisher_fast.PLAIN):
      ce, new_hidden, new_stats = self.train_ce(
        params,
        shared.batch_stats,
        inputs_TxB,
        targets_TxB,
        hidden_BxH,
        arch,
        key,
        tap=tap,
        edges=edges,
      )
      pen = (
        enas_wpl.edge_penalty(params, wpl_state, arch, alpha=wpl_alpha)
        if use_wpl
        else jnp.zeros([], jnp.float32)
      )
      return ce + pen, (ce, pen, new_hidden, new_stats)

    grads, aux = self.shared_grads(loss_fn, shared.params, arch)
    ce, pen, new_hidden, new_stats = aux
    tx = setup.shared_optimizer(
      self.config.shared.grad_clip, self.config.shared.weight_decay
    )
    updates, opt_state = tx.update(grads, shared.opt_state, shared.params)
    updates = jax.tree.map(lambda u: lr * u, updates)
    params = optax.apply_updates(shared.params, updates)
    new_shared = SharedState(
      params=params, batch_stats=new_stats, opt_state=opt_state
    )
    # The hidden state is carried to the next batch without its history.
    new_hidden = jax.lax.stop_gradient(new_hidden)
    return new_shared, new_hidden, {"loss": ce, "wpl": pen}

  def grad_after_scan(self) -> bool:
    """Whether the edges' gradients are formed after the time scan
    (`wpl_jax.tapped_grad`): from hidden size
    `config.search.grad_after_scan_from` on ("auto": 800 on CPU, never on
    accelerators; 0 = never), with either `model.matmul_dtype` (bfloat16
    products stay bfloat16 there: `Tap.dense(..., low=...)`)."""
    start = platform_defaults.get(self.config, "search.grad_after_scan_from", 0)
    return bool(start) and self.config.model.hidden >= start

  def shared_grads(self, loss_fn, params: Params, arch: Arch):
    """`(grads, aux)` of `loss_fn(params, edges, tap) -> (loss, aux)`.

    Plain reverse-mode autodiff, or, from hidden size
    `config.search.grad_after_scan_from` on ("auto": 800 on CPU, never
    on accelerators; 0 = never), the same gradient with the arch's edges
    [N-1, H, 2H] as a leaf of their own, read only through the model's
    "edge" tap: their gradient is formed after the time scan, one
    [H, T·B] × [T·B, 2H] GEMM per edge (`wpl_jax.tapped_grad`), instead
    of 35 small GEMMs and 35 accumulations of the [N-1, H, 2H] gradient
    inside the scan's backward. Equal to autodiff (tested); 0.90× the
    autodiff step at H = 1000 on an Intel CPU, 0.87–0.97× on an AMD one,
    1.02× at H ≤ 400 (WORKSPACE §6.4).
    """
    hidden = self.config.model.hidden
    if not self.grad_after_scan():
      return jax.grad(loss_fn, has_aux=True)(params)
    leaves = {
      "params": params,
      "edges": supernet.arch_edges(params["cell"], arch),
    }
    (_, aux), g = tapped_grad.value_and_grad(
      lambda q, _, tap: loss_fn(q["params"], q["edges"], tap),
      leaves,
      None,
      has_aux=True,
    )
    ids = search_space.edge_ids(arch)
    cell = dict(g["params"]["cell"])  # the penalty's part, [E, H, H]
    cell["edge_c"] = cell["edge_c"].at[ids].add(g["edges"][..., :hidden])
    cell["edge_h"] = cell["edge_h"].at[ids].add(g["edges"][..., hidden:])
    return {**g["params"], "cell": cell}, aux

  # -- WPL: Fisher and anchor after an architecture's turn -------------------

  def fisher_step(
    self,
    shared: SharedState,
    wpl_state: fisher_lib.FisherState,
    arch: Arch,
    inputs_TxB: Array,
    targets_TxB: Array,
    hidden_BxH: Array,
    alpha: Array,
    *,
    key: PRNGKey,
  ) -> tuple[fisher_lib.FisherState, Array]:
    """Fisher on one validation batch, running update, re-anchor all edges.

    ``batch_grad_squared`` runs the arch in training mode (dropout on,
    batch statistics), as the reference does, and carries that forward's
    hidden state to the next Fisher batch; the per-example estimators
    need examples that do not interact, so they run with the batch-norm's
    running statistics and no dropout (a named deviation). No optimizer
    step is taken on this batch.

    Returns:
      `(wpl_state, new_hidden)`: the float32[B, H] hidden state after this
      batch (training mode for ``batch_grad_squared``, else eval mode) for
      the next Fisher batch.
    """
    w = self.config.wpl
    estimator = w.estimator
    params, stats = shared.params, shared.batch_stats
    batch = {
      "inputs": inputs_TxB.T,
      "targets": targets_TxB.T,
      "hidden": hidden_BxH,
    }
    k_drop, k_sample = jax.random.split(key)

    def logits_of(p, b):
      """Example-major eval-mode logits [B, T, V] of the arch on batch `b`."""
      logits, _ = self._eval_forward(p, stats, b["inputs"].T, b["hidden"], arch)
      return jnp.swapaxes(logits, 0, 1)

    def loss_of(p, b):
      return losses.cross_entropy(logits_of(p, b), b["targets"])

    if estimator == "batch_grad_squared":
      # The reference's estimate: the square of the batch-mean gradient of
      # the training-mode loss (dropout on), taken with respect to the
      # arch's fused edges [N-1, H, 2H] only, so no other weight's gradient
      # is formed and F comes back as the arch's N-1 rows. The carried
      # hidden state is this forward's own, as in the reference.
      def edge_loss(edges, tap=fisher_fast.PLAIN):
        ce, new_hidden, _ = self.train_ce(
          params,
          stats,
          inputs_TxB,
          targets_TxB,
          hidden_BxH,
          arch,
          k_drop,
          tap=tap,
          edges=edges,
        )
        return ce, new_hidden

      fused = supernet.arch_edges(params["cell"], arch)
      # As the shared step's (`shared_grads`), but not under a vmap (the
      # seed axis): the loss closes over the params here, and the taps'
      # discovery refuses batched inputs (it cannot tell a vmap around
      # the whole gradient from one inside the loss).
      vmapped = any(
        type(v).__name__ == "BatchTracer"
        for v in jax.tree.leaves(
          (fused, stats, hidden_BxH, inputs_TxB, targets_TxB, k_drop)
        )
      )
      if self.grad_after_scan() and not vmapped:
        (_, new_hidden), g = tapped_grad.value_and_grad(
          lambda e, _, tap: edge_loss(e, tap), fused, None, has_aux=True
        )
      else:
        g, new_hidden = jax.grad(edge_loss, has_aux=True)(fused)
      hid = self.config.model.hidden
      new_fisher = {
        "edge_c": jnp.square(g[..., :hid]),
        "edge_h": jnp.square(g[..., hid:]),
      }
    elif estimator == "per_example" and w.fisher_method == "fast":
      # Exact per-example Fisher from one probed backward pass (issue 6);
      # equal to the vmap(grad) path below (tests/fisher_fast_test.py).
      # The carried hidden state comes from the Fisher's own forward.
      new_fisher, new_hidden = edge_fisher.enas_edge_fisher(
        self.model,
        {"params": params, "batch_stats": stats},
        arch,
        batch,
        chunk_size=platform_defaults.get(self.config, "wpl.chunk_size"),
        dense=False,
      )
    else:
      new_fisher = enas_wpl.estimate_fisher(
        loss_of,
        params,
        arch,
        batch,
        estimator=estimator,
        key=k_sample,
        logits_fn=logits_of,
        chunk_size=platform_defaults.get(self.config, "wpl.chunk_size"),
      )
      # Only the carried hidden state is needed: no decoder.
      _, new_hidden = self.model.apply(
        {"params": params, "batch_stats": stats},
        inputs_TxB,
        hidden_BxH,
        arch,
        train=False,
        decode=False,
      )
    wpl_state = enas_wpl.update_after_arch(
      wpl_state,
      params,
      new_fisher,
      arch,
      mode=w.mode,
      alpha=alpha,
      decay=w.ema_new,
      clip=w.clip if w.clip > 0 else None,
    )
    return wpl_state, new_hidden

  # -- evaluation -------------------------------------------------------------

  def eval_archs(
    self,
    shared: SharedState,
    archs: Arch,
    inputs_TxB: Array,
    targets_TxB: Array,
    hidden_BxH: Array,
  ) -> Array:
    """Validation perplexities float32[K] of K archs on one batch (vmapped)."""
    ppl, _ = self.eval_many(shared, archs, inputs_TxB, targets_TxB, hidden_BxH)
    return ppl

  def _eval_nll_sum(
    self, variables, arch, inputs_TxB, targets_TxB, hidden_BxH, weights=None
  ):
    """(Σ weights·token NLL, new hidden) of one arch in search evaluation.

    Batch-norm as `eval_logits`; with `config.model.ce_chunk` > 0 the
    decoder runs in chunks (`losses.chunked_nll_sum`, same value).
    """
    chunk = self.config.model.ce_chunk
    out, new_hidden = self.eval_logits(
      variables, arch, inputs_TxB, hidden_BxH, decode=not chunk
    )
    if chunk:
      total = losses.chunked_nll_sum(
        variables["params"],
        out,
        targets_TxB,
        weights,
        chunk=chunk,
        matmul_dtype=self.model.matmul_dtype,
      )
    else:
      nll = optax.softmax_cross_entropy_with_integer_labels(out, targets_TxB)
      total = jnp.sum(nll if weights is None else nll * weights)
    return total, new_hidden

  def eval_logits(self, variables, arch, inputs_TxB, hidden_BxH, decode=True):
    """Search-evaluation logits [T, B, V] and new hidden of one arch.

    `config.search.eval_bn` = "running" (reference): eval mode with the
    batch-norm's running statistics, which the last trained architecture
    set. "batch": no dropout, but each child normalised by its own batch
    statistics, so the score reflects the weights and not a statistics
    mismatch between architectures.
    """
    if self.config.search.get("eval_bn", "running") == "running":
      return self.model.apply(
        variables, inputs_TxB, hidden_BxH, arch, train=False, decode=decode
      )
    model = self.model.clone(
      dropout_output=0.0,
      dropout_input=0.0,
      dropout_embed=0.0,
      dropconnect=0.0,
    )
    out, _ = model.apply(
      variables,
      inputs_TxB,
      hidden_BxH,
      arch,
      train=True,
      decode=decode,
      mutable=["batch_stats"],
    )
    return out

  def eval_many(self, shared, archs, inputs_TxB, targets_TxB, hidden_BxH):
    """(perplexity [K], final hidden [K, B, H]) of K archs in one call.

    Batch-norm as `config.search.eval_bn` says (see `eval_logits`); the K
    archs are vmapped in groups as `_map_archs` says.
    """
    variables = {"params": shared.params, "batch_stats": shared.batch_stats}

    def one(arch):
      total, new_hidden = self._eval_nll_sum(
        variables, arch, inputs_TxB, targets_TxB, hidden_BxH
      )
      return jnp.exp(total / targets_TxB.size), new_hidden

    return self._map_archs(one, archs)

  def _map_archs(self, one, archs):
    """`one` over the K archs on the leading axis, stacked: vmapped groups.

    `config.search.eval_vmap` = g archs share one vmap and the groups run
    one after the other (`lax.map`); 0 = all K in one vmap. Under a vmap
    each arch's edges are gathered at once and every matmul is a batched
    one: on a 2-core CPU one arch at a time (g = 1, the `enas_ptb`
    default) evaluates K = 16 cells 0.84× as long at H = 1000 with 2.9 GB
    less peak memory, and a single arch (the REINFORCE step's K = 1) runs
    without vmap whatever g is (0.85× at H = 200; WORKSPACE §6.3). The
    values are the same either way. On an H200 a vmap of all K (g = 0) is
    2.3x faster than g = 1 at K = 16 (WORKSPACE §10.4): "auto" (the
    default) is 1 on CPU and 0 elsewhere; the search forces 0 when its
    devices split the K archs between them.
    """
    k = archs.activations.shape[0]
    group = self.eval_vmap
    if group is None:
      group = platform_defaults.get(self.config, "search.eval_vmap", 0)
    if k == 1:
      out = one(jax.tree.map(lambda a: a[0], archs))
      return jax.tree.map(lambda a: a[None], out)
    if group == 0 or group >= k:
      return jax.vmap(one)(archs)
    if group == 1:  # `lax.map`'s batch_size=1 would vmap groups of one
      return jax.lax.map(one, archs)
    return jax.lax.map(one, archs, batch_size=group)

  def eval_archs_windows(
    self,
    shared: SharedState,
    archs: Arch,
    inputs_WxTxB: Array,
    targets_WxTxB: Array,
    mask_WxTxB: Array,
  ) -> Array:
    """Summed token NLL float32[K] of K archs over W consecutive windows.

    The shared weights score every arch (vmapped) on the same windows,
    the hidden state starting at zero and carried from window to window;
    targets where `mask` is 0 (padding) count for nothing. Batch-norm as
    `config.search.eval_bn` says. Divide by `mask.sum()` for the mean.
    """
    variables = {"params": shared.params, "batch_stats": shared.batch_stats}
    batch, h = inputs_WxTxB.shape[-1], self.config.model.hidden

    def one(arch):
      def body(carry, xs):
        hidden, total = carry
        x, y, m = xs
        nll, hidden = self._eval_nll_sum(variables, arch, x, y, hidden, m)
        return (hidden, total + nll), None

      init = (jnp.zeros((batch, h), jnp.float32), jnp.zeros([], jnp.float32))
      (_, total), _ = jax.lax.scan(
        body, init, (inputs_WxTxB, targets_WxTxB, mask_WxTxB)
      )
      return total

    # Groups of `eval_chunk` archs: a vmap of all K would hold K windows
    # of [T, B, V] logits at once.
    return jax.lax.map(one, archs, batch_size=self.config.search.eval_chunk)

  # -- controller -------------------------------------------------------------

  def controller_step(
    self,
    ctrl: ControllerState,
    shared: SharedState,
    inputs_TxB: Array,
    targets_TxB: Array,
    hidden_BxH: Array,
    *,
    key: PRNGKey,
  ) -> tuple[ControllerState, Array, dict[str, Array]]:
    """One REINFORCE step on K sampled archs (K = 1 in the reference).

    R = reward_c / perplexity of the validation batch (docs/method.md §4).
    `controller.reward_form` "per_decision" (ENAS-pytorch's form): decision
    t of a cell gets reward R + entropy_coef · H_t and its own moving-average
    baseline b_t (a [2N-1] vector); "sequence": every decision gets the
    cell's R + entropy_coef · Σ_t H_t and one scalar baseline. The baseline
    is updated first (to the mean over the K cells; at step 0 it is that
    mean), then loss = −1/K Σ_k Σ_t log p_kt · (r_kt − b_t).

    Returns:
      `(ctrl, new_hidden, metrics)`: the hidden state of the first arch
      after this validation batch (carried to the next reward batch).
    """
    c = self.config.controller
    n = self.config.model.num_nodes
    archs, _, entropies = sampler.sample_architectures(
      ctrl.params, key=key, k=c.batch_size, num_nodes=n, **self.policy_kw()
    )
    ppl, hiddens = self.eval_many(
      shared, archs, inputs_TxB, targets_TxB, hidden_BxH
    )
    per_decision = setup.reward_form(self.config) == "per_decision"

    def loss_fn(cp):
      logp, ent = jax.vmap(
        lambda a: controller_lib.decision_log_probs(cp, a, **self.policy_kw())
      )(archs)  # [K, 2N-1] each, from one teacher-forced pass
      if per_decision:
        # ENAS-pytorch: decision t's reward is R + coef · H_t, its baseline
        # a moving average of that reward; [K, 2N-1].
        reward = (c.reward_c / ppl)[:, None] + c.entropy_coef * ent
      else:
        # One reward per cell, R + coef · Σ_t H_t, for every decision; [K].
        reward = c.reward_c / ppl + c.entropy_coef * entropies
        logp = jnp.sum(logp, axis=1)
      reward = jax.lax.stop_gradient(reward)
      mean_r = jnp.mean(reward, axis=0)  # over the K cells
      baseline = jnp.where(
        ctrl.step == 0,
        mean_r,
        c.baseline_decay * ctrl.baseline + (1 - c.baseline_decay) * mean_r,
      )
      adv = reward - baseline[None]  # [K] or [K, 2N-1]
      # −Σ_t log p_t · adv_t, averaged over the K cells.
      return -jnp.sum(logp * adv) / adv.shape[0], baseline

    (loss, baseline), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      ctrl.params
    )
    tx = setup.controller_optimizer(c.lr)
    updates, opt_state = tx.update(grads, ctrl.opt_state, ctrl.params)
    new_ctrl = ControllerState(
      params=optax.apply_updates(ctrl.params, updates),
      opt_state=opt_state,
      baseline=baseline,
      step=ctrl.step + 1,
    )
    metrics = {
      # The cells' mean reward R + coef · Σ_t H_t, in either form.
      "reward": jnp.mean(c.reward_c / ppl + c.entropy_coef * entropies),
      "ppl": jnp.mean(ppl),
      "entropy": jnp.mean(entropies),
      "loss": loss,
      "baseline": jnp.mean(baseline),
    }
    return new_ctrl, hiddens[0], metrics

  def policy_kw(self) -> dict:
    """The controller's logit shaping and the space's fixed node-0 act."""
    c = self.config.controller
    return {
      "temperature": c.temperature,
      "tanh_constant": c.tanh_constant,
      "fixed_first_activation": setup.fixed_first_activation(self.config),
    }

  def policy_entropy(self, ctrl_params: Params, archs: Arch) -> Array:
    """Exact entropy (nats) of the search policy over the cells `archs`.

    `archs` must be the whole space (int32[S, N] fields): the controller's
    probability of every cell (teacher-forced, `controller.log_prob`) gives
    -Σ p log p; the uniform policy's is log S. Uniform sampling over the
    32-cell space has 3.466 nats; a controller that concentrates has less.
    """
    s = jax.tree.leaves(archs)[0].shape[0]
    if setup.search_policy(self.config) == "random":
      return jnp.log(jnp.float32(s))
    logp = jax.vmap(
      lambda a: controller_lib.log_prob(ctrl_params, a, **self.policy_kw())[0]
    )(archs)
    return -jnp.sum(jnp.exp(logp) * logp)

  def sample(self, ctrl_params: Params, *, key: PRNGKey, k: int) -> Arch:
    """K architectures from the search policy (one vmapped call).

    `config.search.policy` "enas" samples the controller; "random" draws
    uniformly from the space (the controller's params are then unused).
    """
    n = self.config.model.num_nodes
    if setup.search_policy(self.config) == "random":
      return sampler.sample_uniform_architectures(
        key=key,
        k=k,
        num_nodes=n,
        fixed_first_activation=setup.fixed_first_activation(self.config),
      )
    archs, _, _ = sampler.sample_architectures(
      ctrl_params, key=key, k=k, num_nodes=n, **self.policy_kw()
    )
    return archs
