"""`harness run` under torchrun: two "nodes" on this machine (c10d rendezvous, gloo), the launched
ranks walking one sweep, rank 0 alone writing the run directory; a rank SIGKILLed mid-case ends
that case as `error` while the next case runs. Plus the pure parts (environment, placement,
merging the ranks' outcomes) without any process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.errors import HarnessError
from harness.run import launched
from harness.run.launched import INFLIGHT, agent_id, from_env, lost_row, merge, restarted_run
from harness.run.ranks import FAULT_ENV, placement_fields
from tests.conftest import tiny_suite

ROOT = Path(__file__).resolve().parents[2]
_TORCHRUN_TIMEOUT_S = 240
TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip


# --- the pure parts ------------------------------------------------------------------------------
def test_alone_or_a_world_of_one_is_not_launched():
    assert from_env({}) is None
    assert from_env({**TORCHRUN_ENV, "RANK": "0", "WORLD_SIZE": "1"}) is None


def test_launch_reads_torchruns_environment():
    launch = from_env({**TORCHRUN_ENV, "GROUP_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "3",
                       "TORCHELASTIC_USE_AGENT_STORE": "True"})  # fmt: skip
    assert (launch.rank, launch.world, launch.local_rank, launch.node_rank) == (1, 4, 1, 0)
    assert (launch.num_nodes, launch.attempt, launch.agent_store) == (2, 3, True)


@pytest.mark.parametrize("change,words", [
    ({"RANK": "x"}, "RANK: 'x' is not an integer"),
    ({"RANK": "4"}, "RANK: 4 with WORLD_SIZE 4; allowed: 0 <= RANK < WORLD_SIZE"),
    ({"MASTER_PORT": ""}, "MASTER_PORT: not set"),
])  # fmt: skip
def test_bad_torchrun_environment_is_one_line_naming_the_variable(change, words):
    with pytest.raises(HarnessError) as exc:
        from_env({**TORCHRUN_ENV, **change})
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_two_nodes_on_one_host_are_told_apart_by_node_rank():
    places = [{"host": "vm", "node_rank": n} for n in (0, 0, 1, 1)]
    row = {"bytes_sent_per_rank": [10, 20, 30, 40],
           "exposed_comm_ms_per_rank": [1.0, 2.0, 3.0, 0.5],
           "peak_mem_above_inputs_bytes_per_rank": [100, 200, 300, 400]}  # fmt: skip
    fields = placement_fields(places, row)
    assert fields["num_nodes"] == 2 and fields["rank_nodes"] == [0, 0, 1, 1]
    # rank r sends to r+1 (mod 4): 0→1 and 2→3 stay on a node, 1→2 and 3→0 cross
    assert fields["ring_links"] == ["intra", "inter", "intra", "inter"]
    assert fields["bytes_sent_inter_node"] == 20 + 40
    assert fields["bytes_sent_per_node"] == [30, 70]
    assert fields["exposed_comm_ms_per_node"] == [2.0, 3.0]
    assert fields["peak_mem_above_inputs_bytes_per_node"] == [300, 700]
    alone = placement_fields([{"host": "vm", "node_rank": 0}] * 2, {})
    assert alone["ring_links"] == ["intra", "intra"] and "bytes_sent_inter_node" not in alone


def test_a_dead_rank_explains_rank_zeros_failure():
    row = {"status": "error", "reason": "rank 0: RuntimeError: Connection closed by peer",
           "time_ms_median": 1.0}  # fmt: skip
    merged = merge(row, {1: {"status": "error", "reason": "rank 1 of 2 died (signal SIGKILL)"},
                         2: {"status": "ok", "reason": ""}})  # fmt: skip
    assert merged["status"] == "error"
    assert merged["reason"].startswith("rank 1 of 2 died (signal SIGKILL); rank 0: RuntimeError")
    late = merge({"status": "ok", "reason": ""}, {1: {"status": "timeout", "reason": "no result"}})
    assert (late["status"], late["reason"]) == ("timeout", "rank 1: no result")
    assert merge({"status": "ok"}, {1: {"status": "ok"}}) == {"status": "ok"}


def test_a_restarted_group_resumes_its_own_run_and_records_the_lost_case(tmp_path):
    from harness.run.sweep import plan
    from harness.suite import parse_suite

    out, run = tmp_path / "out", tmp_path / "out" / "run1"
    run.mkdir(parents=True)
    assert restarted_run(out) is None  # a first start
    launched.run_pointer(out).write_text(f"{agent_id()}\n{run}\n")
    assert restarted_run(out) == run  # the same torchrun agent: a restart
    launched.run_pointer(out).write_text(f"otherhost:1\n{run}\n")
    assert restarted_run(out) is None  # a later job (another agent) makes its own run
    suite = parse_suite(tiny_suite(implementations=["ring"], sweep={"world_size": [2]}))
    tasks = plan(suite, "cpu")
    (run / INFLIGHT).write_text(json.dumps({"key": list(tasks[0].key)}))
    assert lost_row(run, tasks, {tasks[0].key}) is None  # its row was written after all
    (run / INFLIGHT).write_text(json.dumps({"key": list(tasks[0].key)}))
    row = lost_row(run, tasks, set())
    assert (row["status"], row["case"], row["world_size"]) == ("error", tasks[0].case.name, 2)
    assert "torchrun restarted the group" in row["reason"]
    assert not (run / INFLIGHT).exists() and lost_row(run, tasks, set()) is None


# --- torchrun, two nodes on this machine ---------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(tmp_path: Path, suite: dict, nproc: int, env: dict[str, str],
              extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """Both nodes' torchrun (c10d rendezvous on 127.0.0.1) on one suite; their outputs."""
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
               str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--nproc-per-node", str(nproc), "--monitor-interval", "0.2", *extra,
               "-m", "harness", "run", str(tmp_path / "suite.yaml"), "--out",
               str(tmp_path / "out"), "--no-report", "--fail-on", "none"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, text=True,
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))  # fmt: skip
    outs = []
    deadline = time.monotonic() + _TORCHRUN_TIMEOUT_S
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:  # torchrun ends its processes on SIGTERM; SIGKILL would orphan them
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            pytest.fail(f"torchrun did not finish in {_TORCHRUN_TIMEOUT_S}s")
        assert proc.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


def _rows(tmp_path: Path) -> dict[str, dict]:
    runs = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # rank 0 alone writes the run
    lines = (runs[0] / "rows.jsonl").read_text().splitlines()
    meta = json.loads((runs[0] / "run.json").read_text())
    assert meta["launch"]["launcher"] == "torchrun"
    return {row["seq_layout"] + f"-p{row['world_size']}": row for row in map(json.loads, lines)}


def _assert_matches_float64(row: dict) -> None:
    assert row["status"] == "ok", row
    for key in ("err_rel_l2", "err_dq_rel_l2", "err_dk_rel_l2", "err_dv_rel_l2"):
        assert row[key] < 1e-5, (key, row[key])


@pytest.mark.distributed
def test_two_nodes_one_rank_each_and_a_rank_killed_mid_case(tmp_path):
    # zigzag's rank 1 (on the other node) SIGKILLs itself once its group is up; striped follows
    sweep = {"seq_len": [64], "world_size": [2], "causal": [True],
             "seq_layout": ["zigzag", "striped"], "phase": ["fwd_bwd"]}  # fmt: skip
    suite = tiny_suite(implementations=["ring"], limits={"case_timeout_s": 60}, sweep=sweep)
    outs = _torchrun(tmp_path, suite, nproc=1, env={FAULT_ENV: "kill:1@zigzag"})
    rows = _rows(tmp_path)
    assert set(rows) == {"zigzag-p2", "striped-p2"}
    killed = rows["zigzag-p2"]
    assert killed["status"] == "error"
    assert killed["reason"].startswith("rank 1 of 2 died (signal SIGKILL)"), killed["reason"]
    row = rows["striped-p2"]
    _assert_matches_float64(row)
    assert row["launcher"] == "torchrun" and row["num_nodes"] == 2
    assert row["rank_node_ranks"] == [0, 1] and row["ring_links"] == ["inter", "inter"]
    assert row["bytes_sent_inter_node"] == sum(row["bytes_sent_per_rank"]) > 0
    assert len(row["peak_mem_above_inputs_bytes_per_node"]) == 2
    assert any("following rank 0's sweep" in out for out in outs)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_two_ranks_each_subgroups_and_single_process_cases(tmp_path):
    suite = tiny_suite(implementations=["ring"], limits={"case_timeout_s": 90},
                       sweep={"seq_len": [64], "world_size": [4, 2, 1, 8], "causal": [True],
                              "seq_layout": ["zigzag"], "phase": ["fwd_bwd"]})  # fmt: skip
    _torchrun(tmp_path, suite, nproc=2, env={})
    rows = _rows(tmp_path)
    four, two, one = rows["zigzag-p4"], rows["zigzag-p2"], rows["contiguous-p1"]
    for row in (four, two, one):
        _assert_matches_float64(row)
    # ranks 0,1 on node 0 and 2,3 on node 1: two of the four ring links cross
    assert four["rank_node_ranks"] == [0, 0, 1, 1]
    assert four["ring_links"] == ["intra", "inter", "intra", "inter"]
    assert len(four["peak_mem_above_inputs_bytes_per_rank"]) == 4
    # world_size 2 runs on the first two launched ranks: one node
    assert two["num_nodes"] == 1 and two["ring_links"] == ["intra", "intra"]
    assert rows["zigzag-p8"]["status"] == "skipped"
    assert "needs 8 launched ranks; torchrun started 4" in rows["zigzag-p8"]["reason"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_launched_process_killed_restarts_the_group_into_the_same_run(tmp_path):
    # rank 1's launched process (not a case rank) SIGKILLs itself when zigzag's job comes, on
    # attempt 0 only: torchrun restarts both nodes, the new rank 0 resumes the run, zigzag is the
    # lost case (`error`), striped runs
    sweep = {"seq_len": [64], "world_size": [2], "causal": [True],
             "seq_layout": ["zigzag", "striped"], "phase": ["fwd_bwd"]}  # fmt: skip
    suite = tiny_suite(implementations=["ring"], limits={"case_timeout_s": 60}, sweep=sweep)
    _torchrun(tmp_path, suite, nproc=1, env={FAULT_ENV: "killrunner:1@zigzag"},
              extra=("--max-restarts", "1"))  # fmt: skip
    rows = _rows(tmp_path)
    assert set(rows) == {"zigzag-p2", "striped-p2"}
    assert rows["zigzag-p2"]["status"] == "error"
    assert "torchrun restarted the group" in rows["zigzag-p2"]["reason"]
    _assert_matches_float64(rows["striped-p2"])
