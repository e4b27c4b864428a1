"""Analytic models: Ring Attention's step time, overlap and memory (`ring`) and its calibration.

Reads result files and device profiles only: nothing here imports torch.
"""
