"""Analytic models of memory, time and the longest context that fits (issue 16).

memory.py      the sources' formulas (score matrix, BPT's per-layer activations, the decoder-only
               notes' activation memory and KV cache, model states) and what each implementation
               of this repository holds per call
flops_time.py  time from FLOPs and bytes: a roofline over a device profile
devices.py     named device profiles (A100-80GB, H100-80GB, H200-141GB, B200, TPUv4)
projection.py  max context and step time per implementation, model size and device count;
               `predict_max_seqlen` for one case on one device
predict.py     predicted memory and time beside every measured row of a run
ring.py        Ring Attention's step time, overlap and per-device memory (and ring_calibration.py)
Reads result files and device profiles only: nothing here imports torch.
"""
