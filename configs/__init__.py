"""Experiment configs (ml_collections): `--config=configs/<name>.py`; defaults in common.py."""
