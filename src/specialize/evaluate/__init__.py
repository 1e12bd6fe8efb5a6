"""Evaluation: contenders on the held-out split, their metrics, intervals and paired tests."""
