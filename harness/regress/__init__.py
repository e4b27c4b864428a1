"""Regression judgement: `compare` is the one judge; history, baselines and exporters use it.

Reads result files only: nothing here imports torch.
"""
