"""Max context per implementation under a memory budget (`harness frontier`).

    search.py   exponential then binary search over lengths (any monotone pass/fail probe)
    probe.py    one length as an ordinary runner task in an isolated worker; how the budget holds
    records.py  the search of each (workload, implementation, phase), its JSON record, ratios

The BPT paper's headline (Liu & Abbeel, arXiv 2305.19370): blockwise attention and FFN train
sequences up to 32× longer than a vanilla transformer and 2–4× longer than memory-efficient
attention in the same memory; Ring Attention (arXiv 2310.01889) multiplies that by the devices.
"""
