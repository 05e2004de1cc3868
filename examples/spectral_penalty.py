r"""A smooth spectral-norm penalty in an optax training loop.

The largest singular value :math:`\sigma_{\max}(W)` of a weight matrix bounds
how much a layer can stretch its input (its Lipschitz constant), but it is not
smooth: where the top two singular values meet, its gradient jumps from one
singular pair to the other. The log-trace of the exponentiated Gram matrix is a
smooth stand-in for its square. With :math:`\sigma_1 \ge \dots \ge \sigma_k`
the singular values of :math:`W` (:math:`k = \min(n, m)`),

.. math::

    L_\beta(W) = \log \operatorname{tr} \exp(\beta\,W W^\top)
               = \log \sum_i e^{\beta \sigma_i^2} \;(+\ n - m \text{ zeros if } n > m),

a log-sum-exp, i.e. a soft maximum, of :math:`\beta\sigma_i^2`, so that

.. math::

    \beta\,\sigma_{\max}^2 \;\le\; L_\beta(W) \;\le\; \beta\,\sigma_{\max}^2 + \log n

and :math:`L_\beta / \beta \to \sigma_{\max}^2` as :math:`\beta` grows. Its
gradient, :math:`2\beta\,W V \operatorname{diag}(w) V^\top` with softmax
weights :math:`w_i \propto e^{\beta\sigma_i^2}` over the right singular
vectors :math:`V`, pushes mostly on the top singular directions and stays
smooth (and finite, for any :math:`\beta`: ``log_trace_expm_gram`` never forms
:math:`e^{\beta\sigma^2}` itself).

This script fits a 2-layer MLP to synthetic regression data twice, with and
without ``penalty_weight * log_trace_expm_gram(W1, scale=beta)`` added to the
mean squared error, and compares the top singular value of the first layer and
the task loss. It then evaluates the surrogate on a stack of weight matrices
(the first layer's snapshots during training) under ``jax.jit(jax.vmap(...))``,
against :math:`\beta\sigma_{\max}^2` and its upper bound.

Run it with ``python examples/spectral_penalty.py`` (about ten seconds on a CPU).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtrace import log_trace_expm_gram, trace_expm_gram

D_IN, HIDDEN, D_OUT = 16, 64, 1
N_TRAIN, N_TEST = 1024, 1024
NOISE = 0.1


def make_data(key: jax.Array) -> dict[str, jax.Array]:
    """Regression data from a random teacher MLP whose first layer has one strong direction."""
    k_w, k_v, k_x, k_noise = jax.random.split(key, 4)
    w = jax.random.normal(k_w, (D_IN, HIDDEN)) / math.sqrt(D_IN)
    u = jnp.zeros(D_IN).at[0].set(1.0)
    w = w + 3.0 * jnp.outer(u, jnp.ones(HIDDEN)) / math.sqrt(HIDDEN)  # sigma_max ~ 4
    v = jax.random.normal(k_v, (HIDDEN, D_OUT)) / math.sqrt(HIDDEN)
    x = jax.random.normal(k_x, (N_TRAIN + N_TEST, D_IN))
    y = jnp.tanh(x @ w) @ v + NOISE * jax.random.normal(k_noise, (N_TRAIN + N_TEST, D_OUT))
    return {
        "x_train": x[:N_TRAIN],
        "y_train": y[:N_TRAIN],
        "x_test": x[N_TRAIN:],
        "y_test": y[N_TRAIN:],
    }


def init_params(key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (D_IN, HIDDEN)) / math.sqrt(D_IN),
        "b1": jnp.zeros(HIDDEN),
        "w2": jax.random.normal(k2, (HIDDEN, D_OUT)) / math.sqrt(HIDDEN),
        "b2": jnp.zeros(D_OUT),
    }


def predict(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def task_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((predict(params, x) - y) ** 2)


def sigma_max(w: jax.Array) -> jax.Array:
    """Largest singular value, for reporting (not differentiated)."""
    return jnp.linalg.svd(w, compute_uv=False)[..., 0]


def make_step(optimizer: optax.GradientTransformation, beta: float):
    """One jit-compiled training step; ``penalty_weight`` is an argument, so the
    same compiled step serves the penalized run and the baseline (weight 0)."""

    def loss_fn(params, x, y, penalty_weight):
        fit = task_loss(params, x, y)
        penalty = log_trace_expm_gram(params["w1"], scale=beta)
        return fit + penalty_weight * penalty, (fit, penalty)

    @jax.jit
    def step(params, opt_state, x, y, penalty_weight):
        (_, (fit, penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, x, y, penalty_weight
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, fit, penalty

    return step


def train(
    data: dict[str, jax.Array],
    params: dict[str, jax.Array],
    step,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    penalty_weight: float,
    label: str,
    verbose: bool,
    snapshot_every: int = 0,
) -> tuple[dict[str, jax.Array], list[jax.Array]]:
    opt_state = optimizer.init(params)
    weight = jnp.asarray(penalty_weight, jnp.float32)
    snapshots = []
    report_every = max(steps // 5, 1)
    for i in range(steps):
        if snapshot_every and i % snapshot_every == 0:
            snapshots.append(params["w1"])
        params, opt_state, fit, penalty = step(
            params, opt_state, data["x_train"], data["y_train"], weight
        )
        if verbose and (i % report_every == 0 or i == steps - 1):
            print(
                f"  [{label:>9}] step {i:4d}  mse {float(fit):.4f}  "
                f"penalty {float(penalty):8.3f}  sigma_max(W1) {float(sigma_max(params['w1'])):.3f}"
            )
    if snapshot_every:
        snapshots.append(params["w1"])
    return params, snapshots


def summarize(params: dict[str, jax.Array], data: dict[str, jax.Array]) -> dict[str, float]:
    return {
        "sigma_max": float(sigma_max(params["w1"])),
        "train_loss": float(task_loss(params, data["x_train"], data["y_train"])),
        "test_loss": float(task_loss(params, data["x_test"], data["y_test"])),
    }


def main(
    steps: int = 1000,
    *,
    penalty_weight: float = 3e-4,
    beta: float = 8.0,
    learning_rate: float = 1e-2,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains with and without the penalty and returns what it printed.

    Returns:
      ``{"baseline": {...}, "penalized": {...}, "surrogate": {...}, "seconds": float}``:
      per run the final ``sigma_max`` of W1 and the ``train_loss`` / ``test_loss``
      (mean squared error); for the batched evaluation, per snapshot of the
      penalized W1, ``beta * sigma_max**2``, the surrogate ``log_trace`` and
      ``trace`` (tr expm(beta W1 W1^T)), and the bound ``log n``.
    """
    start = time.perf_counter()
    k_data, k_init = jax.random.split(jax.random.key(seed))
    data = make_data(k_data)
    params0 = init_params(k_init)
    optimizer = optax.adam(learning_rate)
    step = make_step(optimizer, beta)

    if verbose:
        print(
            f"2-layer MLP {D_IN}-{HIDDEN}-{D_OUT}, {N_TRAIN} samples, {steps} Adam steps; "
            f"penalty {penalty_weight} * log tr expm({beta} W1 W1^T)"
        )
        print(f"  initial sigma_max(W1) {float(sigma_max(params0['w1'])):.3f}")
    baseline, _ = train(
        data,
        params0,
        step,
        optimizer,
        steps=steps,
        penalty_weight=0.0,
        label="baseline",
        verbose=verbose,
    )
    penalized, snapshots = train(
        data,
        params0,
        step,
        optimizer,
        steps=steps,
        penalty_weight=penalty_weight,
        label="penalized",
        verbose=verbose,
        snapshot_every=max(steps // 8, 1),
    )
    results = {"baseline": summarize(baseline, data), "penalized": summarize(penalized, data)}

    # Batched evaluation: the surrogate on every snapshot of W1 at once.
    stack = jnp.stack(snapshots)  # (snapshots, D_IN, HIDDEN)

    @jax.jit
    @jax.vmap
    def surrogate(w):
        return {
            "beta_sigma_max_sq": beta * sigma_max(w) ** 2,
            "log_trace": log_trace_expm_gram(w, scale=beta),
            "trace": trace_expm_gram(w, scale=beta),
        }

    batch = jax.tree.map(lambda a: [float(v) for v in a], surrogate(stack))
    batch["log_n"] = math.log(D_IN)  # W1 W1^T is D_IN x D_IN
    results["surrogate"] = batch
    results["seconds"] = time.perf_counter() - start

    if verbose:
        print("\nFinal first-layer spectral norm and task loss (mean squared error):")
        for name in ("baseline", "penalized"):
            r = results[name]
            print(
                f"  {name:>9}: sigma_max(W1) {r['sigma_max']:.3f}  "
                f"train mse {r['train_loss']:.4f}  test mse {r['test_loss']:.4f}"
            )
        print(
            f"\njit(vmap) over {stack.shape[0]} snapshots of the penalized W1 "
            f"{tuple(stack.shape[1:])}: beta*sigma_max^2 <= L <= beta*sigma_max^2 + log n"
        )
        print("  beta*sigma_max^2   log tr expm   tr expm")
        for lo, mid, tr in zip(
            batch["beta_sigma_max_sq"], batch["log_trace"], batch["trace"], strict=True
        ):
            print(f"  {lo:16.3f}   {mid:11.3f}   {tr:9.4g}")
        print(f"  (log n = {batch['log_n']:.3f})\n\ndone in {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()
