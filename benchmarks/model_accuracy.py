"""The analytic model (harness/model/) against a small CPU run, and its projection vs the papers.

    .venv/bin/python benchmarks/model_accuracy.py [RUN_DIR ...]

Without RUN_DIR it runs three small suites (attention: naive, chunked, sdpa_flash, bpt, S =
512..2048; decode: sdpa flash/math and naive over a 2k/8k cache, contiguous and paged; layers:
vanilla_layer, memeff_layer, bpt_layer, S = 512..2048; float32; a few minutes on 2 cores)
into a temporary folder. Prints, per row, measured and predicted peak memory above the inputs
(and time, roofline over the run's measured ceilings, one efficiency per series fitted on its
shortest row; expect large time misses on a loaded machine) and the share of out-of-sample
S-dominated rows within ±15%. Then the projection (harness/model/projection.py) beside the Ring
Attention paper's max contexts (arXiv 2310.01889, Table 3) and its claim that 100M
tokens at hidden 1024 need over 1000 GB without ring attention (sources/000 §2).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUITES = {
    "attention": """name: model-accuracy-attn
description: analytic model check, attention
workload: attention
implementations: [naive, chunked, sdpa_flash, bpt]
sweep: {seq_len: [512, 1024, 2048], batch: [1], num_heads: [8], head_dim: [64],
        block_size: [256], dtype: [float32], causal: [false], phase: [fwd, fwd_bwd]}
timing: {warmup: 0, repeats: 3, min_repeats: 2, max_time_s: 2.0}
limits: {case_timeout_s: 120, memory_budget_gb: 4}
accuracy: {ref_max_rows: 32, ref_chunk_rows: 32, grad_ref_max_seq: 512}
seed: 0
""",
    "decode": """name: model-accuracy-decode
description: analytic model check, decode over a KV cache (GQA 8:1, contiguous and paged)
workload: decode
implementations: [decode_sdpa_flash, decode_sdpa_math, decode_naive]
sweep: {cache_len: [2048, 8192], seqlen_q: [16], batch: [8], num_heads: [8], num_kv_heads: [1],
        head_dim: [128], page_size: [null, 256], cache_dist: [fixed], dtype: [float32],
        phase: [fwd]}
timing: {warmup: 0, repeats: 3, min_repeats: 2, max_time_s: 2.0}
limits: {case_timeout_s: 120}
seed: 0
""",
    "layer": """name: model-accuracy-layer
description: analytic model check, layers
workload: layer
implementations: [vanilla_layer, memeff_layer, bpt_layer]
sweep: {seq_len: [512, 1024, 2048], hidden: [256], num_heads: [4], ffn_expansion: [4],
        block_size: [null], dtype: [float32], causal: [false], phase: [fwd, fwd_bwd]}
timing: {warmup: 0, repeats: 3, min_repeats: 2, max_time_s: 2.0}
limits: {case_timeout_s: 120}
accuracy: {ref_max_rows: 32, grad_ref_max_seq: 512}
seed: 0
""",
}

# Ring Attention (arXiv 2310.01889) Table 3: max context, tokens, training.
PAPER = [("A100-80GB", "3b", 8, "ring", 512_000), ("A100-80GB", "7b", 8, "ring", 256_000),
         ("A100-80GB", "13b", 8, "ring", 128_000), ("A100-80GB", "7b", 32, "ring", 4_096_000),
         ("A100-80GB", "3b", 8, "bpt", 64_000), ("A100-80GB", "7b", 8, "bpt", 32_000),
         ("A100-80GB", "13b", 8, "bpt", 16_000)]  # fmt: skip


def run_suites(folder: Path) -> list[Path]:
    runs = []
    for name, text in SUITES.items():
        suite = folder / f"{name}.yaml"
        suite.write_text(text)
        out = folder / name
        print(f"running the {name} suite (a few minutes on 2 cores) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out),
                        "--no-report", "--fail-on", "none"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        runs += sorted(p for p in out.iterdir() if p.is_dir())
    return runs


def print_accuracy(run: Path) -> None:
    from harness.model.predict import predict_run, summary

    _, recs = predict_run(run)
    print(f"\n{run.name}: memory above inputs (MiB) and time (ms), predicted / measured")
    print(
        f"{'impl':14} {'phase':8} {'S':>6} {'mem meas':>9} {'mem pred':>9} {'ratio':>6} flag"
        f" {'ms meas':>9} {'ms pred':>9} {'ratio':>6}"
    )
    for r in recs:
        if "reason" in r:
            print(f"{r['impl']:14} {r['phase']:8} {r['seq_len']:>6}  {r['reason']}")
            continue
        flag = ("*" if r["calibrated"] else " ") + ("S" if r["s_dominated"] else " ")
        tm, tp, tr = (r.get(k) for k in ("measured_time_ms", "predicted_time_ms", "time_ratio"))
        print(
            f"{r['impl']:14} {r['phase']:8} {r['seq_len']:>6} "
            f"{r['measured_mem_bytes'] / 2**20:9.2f} {r['predicted_mem_bytes'] / 2**20:9.2f} "
            f"{r['mem_ratio']:6.3f} {flag:4} {tm or 0:9.1f} {tp or 0:9.1f} {tr or 0:6.2f}"
        )
    s = summary(recs)
    print(
        f"out-of-sample S-dominated rows of >= 8 MiB within ±{s['band']:.0%}: "
        f"{s['within']}/{s['rows']}; worst {s['worst']}  (* calibration row, S S-dominated)"
    )


def print_projection() -> None:
    from harness.model.devices import DEVICES
    from harness.model.memory import paper_layer_activation_bytes
    from harness.model.projection import max_context, workload

    print("\nprojection vs Ring Attention paper (training, max context tokens)")
    print(f"{'device':10} {'model':5} {'P':>4} {'impl':5} {'paper':>10} {'model':>10} {'ratio':>6}")
    for dev, model, p, impl, paper in PAPER:
        got = max_context(impl, workload(model), DEVICES[dev], p)
        print(f"{dev:10} {model:5} {p:>4} {impl:5} {paper:>10,} {got:>10,} {got / paper:6.2f}")
    for saved, what in (
        (None, "whole model, layer outputs kept"),
        (0.0, "one layer's working set only"),
    ):
        w = workload("7b")
        if saved is not None:
            w = w.model_copy(update={"saved_per_token_hidden": saved})
        got = {i: max_context(i, w, DEVICES["A100-80GB"], 8) for i in ("vanilla", "memeff", "bpt")}
        print(
            f"7B, 8xA100, {what}: BPT/vanilla {got['bpt'] / got['vanilla']:.1f}x, "
            f"BPT/memeff {got['bpt'] / got['memeff']:.2f}x (BPT paper: 32x and 2-4x)"
        )
    per_layer = paper_layer_activation_bytes("bpt", 1, 100_000_000, 1024, 16, 1024)
    print(
        f"\n100M tokens, hidden 1024, batch 1: BPT keeps 2bsh = {per_layer / 1e9:.0f} GB a layer"
        f" output; > 1000 GB from {int(1000e9 // per_layer) + 1} layers (paper: 'over 1000GB')"
    )
    print("\nmax context by device, 7B, P = 1..4096 (tokens)")
    ps = [1, 8, 64, 512, 4096]
    print(f"{'device':11} {'impl':5} " + " ".join(f"{p:>12}" for p in ps))
    for dev in DEVICES.values():
        for impl in ("bpt", "ring"):
            row = [max_context(impl, workload("7b"), dev, p) for p in ps]
            print(f"{dev.name:11} {impl:5} " + " ".join(f"{s:>12,}" for s in row))


def main(argv: list[str]) -> None:
    if argv:
        runs = [Path(a) for a in argv]
        for run in runs:
            print_accuracy(run)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for run in run_suites(Path(tmp)):
                print_accuracy(run)
    print_projection()


if __name__ == "__main__":
    main(sys.argv[1:])
