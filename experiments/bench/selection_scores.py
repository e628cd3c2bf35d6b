"""Benchmark: influence scores for N examples (default 50,000, D=256, C=100) on this machine.

Times `kd_jax.selection.influence_scores` for each Hessian option, then the per-example
scoring pass `v^T g_i` (given the same v) four ways:
  closed form  `example_scores`: (x_i @ V + v_b) . (p_i - e_i), chunked, never [N, D, C];
  jax vmap     `per_example_grads` (vmap(grad)) per chunk, then a dot with v;
  jax loop     a Python loop of a jitted per-example `jax.grad`, timed on a subset and
               extrapolated to N (stated in the output);
  torch vmap   `torch.func.vmap(torch.func.grad(...))` per chunk, if torch is installed.
Random features and a random classifier: the timings, not the scores, are the point; the
scores of every method are checked against the closed form on the subset.

  PYTHONPATH=. python experiments/bench/selection_scores.py [--n 50000] [--loop_subset 500]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import _influence, selection


def _timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  jax.block_until_ready(out)
  return out, time.perf_counter() - start


def _vmap_grad_scores(features, labels, kernel, bias, vector, chunk_size):
  @jax.jit
  def chunk_scores(x, y):
    grad_kernel, grad_bias = selection.per_example_grads(x, y, kernel, bias)
    return (jnp.einsum("ndc,dc->n", grad_kernel, vector[0], precision="highest")
            + grad_bias @ vector[1])

  out = []
  for start in range(0, len(labels), chunk_size):
    x, y = features[start:start + chunk_size], labels[start:start + chunk_size]
    out.append(np.asarray(chunk_scores(x, y)))
  return np.concatenate(out)


def _loop_grad_scores(features, labels, kernel, bias, vector):
  @jax.jit
  def one_grad(x, y):
    loss = lambda p: -jax.nn.log_softmax(x @ p[0] + p[1])[y]
    return jax.grad(loss)((kernel, bias))

  out = []
  for x, y in zip(features, labels):
    grad_kernel, grad_bias = one_grad(x, y)
    out.append(float(jnp.vdot(grad_kernel, vector[0]) + jnp.vdot(grad_bias, vector[1])))
  return np.array(out)


def _torch_vmap_scores(features, labels, kernel, bias, vector, chunk_size):
  import torch
  from torch.func import grad, vmap
  kernel_t, bias_t = torch.from_numpy(np.asarray(kernel)), torch.from_numpy(np.asarray(bias))
  v_kernel, v_bias = (torch.from_numpy(np.array(v)) for v in vector)

  def loss(params, x, y):
    logits = x @ params[0] + params[1]
    return torch.nn.functional.cross_entropy(logits[None], y[None])

  per_example = vmap(grad(loss), in_dims=(None, 0, 0))
  out = []
  with torch.no_grad():
    for start in range(0, len(labels), chunk_size):
      x = torch.from_numpy(features[start:start + chunk_size])
      y = torch.from_numpy(labels[start:start + chunk_size])
      grad_kernel, grad_bias = per_example((kernel_t, bias_t), x, y)
      out.append((torch.einsum("ndc,dc->n", grad_kernel, v_kernel) + grad_bias @ v_bias).numpy())
  return np.concatenate(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=50_000)
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--ref", type=int, default=5_000)
  parser.add_argument("--l2", type=float, default=5e-4)
  parser.add_argument("--loop_subset", type=int, default=500)
  parser.add_argument("--vmap_chunk", type=int, default=1024)
  parser.add_argument("--chunk_size", type=int, default=selection.DEFAULT_CHUNK_SIZE)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  features = rng.normal(size=(args.n, args.dim)).astype(np.float32)
  ref_features = rng.normal(size=(args.ref, args.dim)).astype(np.float32)
  kernel = (rng.normal(size=(args.dim, args.classes)) / np.sqrt(args.dim)).astype(np.float32)
  bias = (0.1 * rng.normal(size=args.classes)).astype(np.float32)
  # Labels mostly agree with the classifier, as they would after training.
  noisy = features @ kernel + bias + rng.gumbel(size=(args.n, args.classes))
  labels = noisy.argmax(1).astype(np.int32)
  ref_labels = (ref_features @ kernel + bias
                + rng.gumbel(size=(args.ref, args.classes))).argmax(1).astype(np.int32)
  problem = (features, labels, kernel, bias, ref_features, ref_labels)
  print(f"N={args.n} D={args.dim} C={args.classes} reference M={args.ref} l2={args.l2} "
        f"chunk_size={args.chunk_size}, {jax.devices()[0].platform} "
        f"({jax.device_count()} device), JAX {jax.__version__}")

  print("\ninfluence_scores end to end (first call includes jit compilation):")
  vectors, solves = {}, {}
  hvp_calls = [0]
  hvp = _influence.hessian_vector_product  # what influence_vector's CG calls per iteration

  def counted_hvp(*hvp_args, **hvp_kwargs):  # counts CG iterations
    hvp_calls[0] += 1
    return hvp(*hvp_args, **hvp_kwargs)

  _influence.hessian_vector_product = counted_hvp
  for hessian in selection.HESSIANS:
    _, first = _timed(selection.influence_scores, *problem, l2=args.l2, hessian=hessian,
                      chunk_size=args.chunk_size)
    hvp_calls[0] = 0
    vectors[hessian], solves[hessian] = _timed(
        selection.influence_vector, *problem, l2=args.l2, hessian=hessian,
        chunk_size=args.chunk_size)
    iterations = f", {hvp_calls[0]} CG iterations" if hessian == "exact" else ""
    print(f"  {hessian:9s} first call {first:8.2f} s   warm: solve {solves[hessian]:8.2f} s"
          f"{iterations}")

  vector = vectors["exact"]
  print(f"\nscoring pass v^T g_i for all N={args.n} (warm, exact v; jit compile excluded):")
  head = slice(0, args.loop_subset)
  reference = selection.example_scores(features[head], labels[head], kernel, bias, vector)
  rows = []
  selection.example_scores(features, labels, kernel, bias, vector, chunk_size=args.chunk_size)
  _, closed = _timed(selection.example_scores, features, labels, kernel, bias, vector,
                     chunk_size=args.chunk_size)
  rows.append(("closed form (example_scores)", closed, "measured"))

  _vmap_grad_scores(features[:args.vmap_chunk], labels[:args.vmap_chunk], kernel, bias,
                    vector, args.vmap_chunk)
  vmapped, t_vmap = _timed(_vmap_grad_scores, features, labels, kernel, bias, vector,
                           args.vmap_chunk)
  rows.append((f"jax vmap(grad), chunks of {args.vmap_chunk}", t_vmap, "measured"))

  _loop_grad_scores(features[:2], labels[:2], kernel, bias, vector)
  looped, t_loop = _timed(_loop_grad_scores, features[head], labels[head], kernel, bias,
                          vector)
  rows.append(("jax Python loop of jax.grad", t_loop * args.n / args.loop_subset,
               f"extrapolated from {args.loop_subset} examples ({t_loop:.2f} s)"))
  errors = {"jax vmap": vmapped[head], "jax loop": looped}

  try:
    import torch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _torch_vmap_scores(features[:args.vmap_chunk], labels[:args.vmap_chunk].astype(np.int64),
                       kernel, bias, vector, args.vmap_chunk)
    torched, t_torch = _timed(_torch_vmap_scores, features, labels.astype(np.int64), kernel,
                              bias, vector, args.vmap_chunk)
    rows.append((f"torch.func vmap(grad), chunks of {args.vmap_chunk}", t_torch,
                 f"measured, torch {torch.__version__}, {torch.get_num_threads()} threads"))
    errors["torch vmap"] = torched[head]
  except ImportError:
    print("  (torch not installed: torch.func row skipped)")

  for name, seconds, note in rows:
    print(f"  {name:42s} {seconds:9.2f} s   x{seconds / closed:8.1f} vs closed form   {note}")
  scale = np.abs(reference).max()
  for name, scores in errors.items():
    print(f"  max |{name} - closed form| / max|score| on the first {args.loop_subset}: "
          f"{np.abs(scores - reference).max() / scale:.1e}")
  solve = solves["exact"]
  print(f"\nexact Hessian totals (solve {solve:.2f} s + scoring pass): closed form "
        f"{solve + closed:.2f} s, Python jax.grad loop {solve + rows[2][1]:.2f} s "
        f"(extrapolated): x{(solve + rows[2][1]) / (solve + closed):.1f}")


if __name__ == "__main__":
  main()
