"""Losses and targets inside `jax.pmap` and `shard_map` over 4 devices.

The device count of the CPU backend is fixed when jax starts, so the 4 forced host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4) live in a child process; one child runs
every function, once per mode (single device jit, pmap, shard_map), to keep compiles few.
Out-of-range labels (`y_bad`: -1 and C on two examples) give NaN for exactly those examples
in every mode, and leave the other examples' values unchanged; token-level `[B, T, C]`
losses with a `where` mask and a NaN teacher row at a masked token give 0 there and the
same values as unmasked elsewhere.
"""

import json
import os
import pathlib
import subprocess
import sys

_CHILD = r"""
import json
import jax
import jax.numpy as jnp
import numpy as np
from jax import shard_map
from jax.sharding import Mesh, PartitionSpec as P
from kd_jax import losses, targets

assert jax.device_count() == 4, jax.devices()
T = 4.0


def everything(zs, zt, y, q, s, y_bad, tokens, teacher_tokens, token_mask):
  def per_example(zs):
    qt = jax.nn.softmax(zt / T)
    return dict(
        cross_entropy=losses.cross_entropy(zs, y),
        soft_cross_entropy=losses.soft_cross_entropy(zs, q),
        kd=losses.kd(zs, zt, T),
        kl_to_targets=losses.kl_to_targets(zs, q, 2.0),
        tsd=losses.tsd(zs, num_secondary=5),
        dkd=losses.dkd(zs, zt, y, 1.0, 8.0, T),
        dkd_to_targets=losses.dkd_to_targets(zs, qt, y, 1.0, 8.0, T))

  values = per_example(zs)
  # d (sum of every loss) / d zs: per-example, so it must not depend on the split either.
  grad = jax.grad(lambda zs: sum(v.sum() for v in per_example(zs).values()))(zs)
  c = zs.shape[-1]
  values.update(
      grad=grad, one_hot=targets.one_hot(y, c), smooth=targets.smooth(y, c, 0.1),
      revise=targets.revise(q, y, 0.8), pt=targets.pt(q, y), topk=targets.topk(q, 3),
      sim=targets.sim(y, s, 0.5), pt_sim=targets.pt_sim(q, y, s),
      bad_cross_entropy=losses.cross_entropy(zs, y_bad),
      bad_dkd=losses.dkd(zs, zt, y_bad, 1.0, 8.0, T),
      bad_revise=targets.revise(q, y_bad, 0.8), bad_sim=targets.sim(y_bad, s, 0.5))
  # Token level: [B, T, C] with padding tokens, whose teacher rows are NaN.
  nan_teacher = teacher_tokens
  values.update(
      tokens_kd=losses.kd(tokens, nan_teacher, T, where=token_mask),
      tokens_kd_grad=jax.grad(lambda z: losses.kd(z, nan_teacher, T, where=token_mask).sum())(
          tokens),
      tokens_dkd=losses.dkd(tokens, nan_teacher, jnp.zeros(token_mask.shape, jnp.int32), 1.0,
                            8.0, T, where=token_mask))
  return values


rng = np.random.default_rng(0)
b, c = 8, 10
zs = (rng.normal(size=(b, c)) * 3).astype(np.float32)
zt = (rng.normal(size=(b, c)) * 3).astype(np.float32)
y = rng.integers(0, c, size=b).astype(np.int32)
q = np.asarray(jax.nn.softmax(rng.normal(size=(b, c)) * 2), np.float32)
s = np.asarray(targets.class_similarity(rng.normal(size=(16, c)).astype(np.float32), 0.5))
y_bad = y.copy()
y_bad[1], y_bad[6] = -1, c        # one bad example on device 0 and one on device 3 (of 4)
bad = np.isin(np.arange(b), [1, 6])
tokens = (rng.normal(size=(b, 3, c)) * 3).astype(np.float32)
token_mask = np.ones((b, 3), bool)
token_mask[2, 1:] = token_mask[5, 2] = False
teacher_tokens = np.where(token_mask[..., None], tokens[::-1], np.nan).astype(np.float32)

args = (zs, zt, y, q, s, y_bad, tokens, teacher_tokens, token_mask)
single = jax.jit(everything)(*args)
unmasked = jax.jit(lambda z, t: losses.kd(z, t, T))(tokens, tokens[::-1])
np.testing.assert_array_equal(np.asarray(single["tokens_kd"])[~token_mask], 0.0)
np.testing.assert_allclose(np.asarray(single["tokens_kd"])[token_mask],
                           np.asarray(unmasked)[token_mask], rtol=1e-6)

split = lambda x: x.reshape((4, b // 4) + x.shape[1:])
pmapped = jax.pmap(everything, in_axes=(0, 0, 0, 0, None, 0, 0, 0, 0))(
    *[a if a is s else split(a) for a in args])
pmapped = jax.tree.map(lambda x: np.asarray(x).reshape((b,) + x.shape[2:]), pmapped)

mesh = Mesh(np.array(jax.devices()), ("batch",))
sharded = jax.jit(shard_map(everything, mesh=mesh,
                            in_specs=(P("batch"),) * 4 + (P(),) + (P("batch"),) * 4,
                            out_specs=P("batch")))(*args)

diffs = {}
for name, want in single.items():
  want = np.asarray(want)
  nan = bad if name.startswith("bad_") else np.zeros(b, bool)
  assert want.shape[0] == b, name
  for got in (single, pmapped, sharded):
    got = np.asarray(got[name]).reshape(b, -1)
    assert np.all(np.isnan(got[nan])) and np.all(np.isfinite(got[~nan])), name
  if name.startswith("bad_"):   # the good examples' values equal those of the clean labels
    # (to float32 rounding: XLA fuses the two computations' passes differently)
    clean = np.asarray(single[name[len("bad_"):]])
    np.testing.assert_allclose(want[~nan], clean[~nan], rtol=1e-6, atol=0, err_msg=name)
  diffs[name] = [float(np.max(np.abs(np.asarray(got[name])[~nan] - want[~nan])
                              / (1 + np.abs(want[~nan])))) for got in (pmapped, sharded)]
print("RESULT " + json.dumps(diffs))
"""


def test_pmap_and_shard_map_match_single_device():
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=repo,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  diffs = json.loads(line[len("RESULT "):])
  assert len(diffs) == 22
  for name, (pmap_diff, shard_map_diff) in diffs.items():
    # Same per-example arithmetic on every device: equal up to float32 rounding.
    assert pmap_diff <= 1e-6, (name, "pmap", pmap_diff)
    assert shard_map_diff <= 1e-6, (name, "shard_map", shard_map_diff)
