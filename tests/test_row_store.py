"""kd_jax.train.row_store: per-example tables on disk, read back by example index exactly,
checked per chunk, never visible half-written."""

import os
import pickle

import numpy as np
import pytest

from kd_jax.train import row_store

FIELDS = {"values": ((3,), np.float16), "lse": ((), np.float32)}
N = 200


def _rows(indices):
  indices = np.asarray(indices)
  return {"values": np.stack([indices, -indices, indices * 0.5], axis=-1).astype(np.float16),
          "lse": (indices * 1.5).astype(np.float32)}


def _write(path, order, meta=None, chunk_bytes=64, batch=16):
  with row_store.TableWriter(str(path), FIELDS, len(order), meta or {"key": "k"},
                             chunk_bytes=chunk_bytes) as writer:
    for start in range(0, len(order), batch):
      part = order[start:start + batch]
      writer.append(_rows(part), part)
    writer.commit()
  return writer


def test_rows_come_back_by_example_index_in_any_order(tmp_path):
  order = np.random.default_rng(0).permutation(N)[:N - 8]  # an epoch's order; 8 dropped
  writer = _write(tmp_path / "t", order)
  assert writer.chunk_rows == 16  # 64 bytes / 6 bytes per row, at least 16
  table = row_store.Table.open(str(tmp_path / "t"), {"key": "k"}, N)
  table.verify()
  for indices in (order[16:48], order[::-1][:40], np.array([order[5], -1, order[7], -1])):
    got = table.rows(indices)
    want = _rows(np.maximum(indices, 0))
    real = indices >= 0
    for name in FIELDS:
      np.testing.assert_array_equal(got[name][real], want[name][real])
      assert not got[name][~real].any()  # padding rows are zeros
      assert got[name].dtype == np.dtype(FIELDS[name][1])
  with pytest.raises(ValueError, match="holds no row for example indices"):
    table.rows(np.setdiff1d(np.arange(N), order)[:2])
  again = pickle.loads(pickle.dumps(table))  # as a loader worker process receives it
  np.testing.assert_array_equal(again.rows(order[:4])["lse"], _rows(order[:4])["lse"])


def test_a_missing_or_other_table_is_reported_not_read(tmp_path):
  assert row_store.Table.open(str(tmp_path / "none"), {"key": "k"}, N) is None
  _write(tmp_path / "t", np.arange(N), meta={"key": "k", "epoch": 3})
  with pytest.raises(ValueError, match="epoch do not match"):
    row_store.Table.open(str(tmp_path / "t"), {"key": "k", "epoch": 4}, N)


def test_a_flipped_bit_in_any_chunk_fails_verification(tmp_path):
  _write(tmp_path / "t", np.arange(N))
  chunks = sorted(p for p in (tmp_path / "t" / "values").rglob("*") if p.is_file()
                  and p.name != "zarr.json")
  assert len(chunks) == N // 16 + 1
  victim = chunks[len(chunks) // 2]
  data = bytearray(victim.read_bytes())
  data[len(data) // 3] ^= 0x10
  victim.write_bytes(bytes(data))
  table = row_store.Table.open(str(tmp_path / "t"), {"key": "k"}, N)
  with pytest.raises(ValueError, match="does not match its checksum"):
    table.verify()


def test_an_interrupted_write_leaves_nothing_that_looks_like_a_table(tmp_path):
  with (pytest.raises(RuntimeError, match="killed"),
        row_store.TableWriter(str(tmp_path / "t"), FIELDS, N, {"key": "k"}) as writer):
    writer.append(_rows(np.arange(16)), np.arange(16))
    raise RuntimeError("killed")
  assert os.listdir(tmp_path) == []
  with (pytest.raises(ValueError, match="16 rows written, 200 declared"),
        row_store.TableWriter(str(tmp_path / "t"), FIELDS, N, {"key": "k"}) as writer):
    writer.append(_rows(np.arange(16)), np.arange(16))
    writer.commit()
  assert os.listdir(tmp_path) == []


def test_a_second_writer_of_the_same_table_keeps_the_first(tmp_path):
  _write(tmp_path / "t", np.arange(N))
  _write(tmp_path / "t", np.arange(N))  # the same rows, committed second: no error
  assert sorted(os.listdir(tmp_path)) == ["t"]
  table = row_store.Table.open(str(tmp_path / "t"), {"key": "k"}, N)
  np.testing.assert_array_equal(table.rows(np.arange(N))["lse"], _rows(np.arange(N))["lse"])
