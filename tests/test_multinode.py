"""Training across machines, on one host: two `torchrun --nnodes 2 --rdzv-backend c10d` launchers (one per
"node", one process each, gloo on CPU) sharing a run folder, as a user would start them on two machines.

Checked: the two-node run is the same run as `converge train --nproc 2` (bit for bit: same global batch,
same ranks); only rank 0 writes and prints; a node killed mid-run (its launcher and its process, as a power
loss would) makes the other one exit within seconds with one clear line, not hang; `converge resume`, on two
nodes again or alone on one machine, continues from the last checkpoint to exactly the uninterrupted run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_distributed import logged, run_ok, train_command
from test_resume import ENV, assert_same_run, metrics_lines, write_task

pytestmark = pytest.mark.slow

EPOCHS = 20
TIMEOUT = 180           # seconds a launcher may take (a loaded CI machine; about 15 s on a quiet one)
NOTICED_WITHIN = 30     # seconds from a node's death to the survivor's exit (about 4 s measured)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_nodes(converge_args: list[str], folder, tag: str) -> list[subprocess.Popen]:
    """Two torchrun launchers, node 0 first: it hosts the rendezvous store (on a cluster, the node named
    by --rdzv-endpoint); node 1 starts once the store listens. Output goes to FOLDER/TAG-nodeN.{out,err}."""
    port = free_port()
    nodes = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", tag,
                   "-m", "converge", *converge_args]
        with open(folder / f"{tag}-node{node}.out", "w") as out, open(folder / f"{tag}-node{node}.err", "w") as err:
            nodes.append(subprocess.Popen(command, stdout=out, stderr=err, env=ENV, start_new_session=True))
        deadline = time.monotonic() + TIMEOUT
        while node == 0 and not listening(port) and nodes[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    return nodes


def wait_all(nodes: list[subprocess.Popen]) -> list[int]:
    deadline = time.monotonic() + TIMEOUT
    codes = []
    for process in nodes:
        try:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            kill_node(process)
            pytest.fail(f"a launcher was still running after {TIMEOUT} s: {process.args}")
    return codes


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts its workers in sessions of their own, so a
    process group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def kill_node(process: subprocess.Popen) -> None:
    """As a lost machine: the launcher and everything it started die at once."""
    for pid in descendants(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=TIMEOUT)


def text(folder, name: str) -> str:
    return (folder / name).read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run in two processes on one machine (`--nproc 2`), uninterrupted."""
    folder = tmp_path_factory.mktemp("multinode-ref")
    task = write_task(folder, "dataset")
    run_ok(train_command(task, folder / "run", "--nproc", "2", "--checkpoint-seconds", "0.05", epochs=EPOCHS))
    return task, folder / "run"


def node_args(task, out) -> list[str]:
    """`converge train` as each node runs it: the flags of the reference, without --nproc."""
    return train_command(task, out, "--checkpoint-seconds", "0.05", epochs=EPOCHS)[3:]


def test_two_nodes_train_the_same_run_as_two_processes_and_rank_0_alone_writes(reference, tmp_path):
    task, ref = reference
    out = tmp_path / "run"
    assert wait_all(start_nodes(node_args(task, out), tmp_path, "train")) == [0, 0]
    assert_same_run(ref, out)  # weights byte for byte, every logged value, the summary
    assert json.loads(text(out, "run.json"))["world_size"] == 2
    events = [e["event"] for e in logged(out, "events.jsonl")]
    assert events.count("restored_best") == 1  # written once, by rank 0
    outputs = [text(tmp_path, f"train-node{n}.out") for n in range(2)]
    assert sum(f"run folder: {out}" in o for o in outputs) == 1  # one summary, printed by rank 0's node
    assert not any(line.startswith("error") for n in range(2) for line in text(tmp_path, f"train-node{n}.err").splitlines())


@pytest.mark.parametrize("lost, resume_on", [(1, "two nodes"), (0, "one machine")],
                         ids=["worker-node-lost", "rendezvous-host-lost"])
def test_a_lost_node_stops_the_other_with_one_line_and_resume_is_exact(reference, tmp_path, lost, resume_on):
    task, ref = reference
    out = tmp_path / "run"
    nodes = start_nodes(node_args(task, out), tmp_path, "killed")
    deadline = time.monotonic() + TIMEOUT
    while metrics_lines(out) < 3 and all(p.poll() is None for p in nodes) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert metrics_lines(out) >= 3 and all(p.poll() is None for p in nodes), "the run did not get going"
    killed_at = time.monotonic()
    kill_node(nodes[lost])
    survivor = nodes[1 - lost]
    try:
        code = survivor.wait(timeout=NOTICED_WITHIN)
    except subprocess.TimeoutExpired:
        kill_node(survivor)
        pytest.fail(f"the surviving node still ran {NOTICED_WITHIN} s after the other was killed")
    assert code != 0
    waited = time.monotonic() - killed_at
    errors = [line for line in text(tmp_path, f"killed-node{1 - lost}.err").splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    assert "lost contact with the other processes of the run" in errors[0], errors[0]
    assert f"converge resume {out}" in errors[0], errors[0]
    assert "Traceback" not in errors[0] and waited < NOTICED_WITHIN
    assert not (out / "summary.json").exists()  # the run is not over: nothing claims it is
    if resume_on == "two nodes":  # both machines back: the same command on each, `resume` for `train`
        assert wait_all(start_nodes(["resume", str(out), "--quiet"], tmp_path, "resumed")) == [0, 0]
    else:  # `converge resume DIR` alone starts as many processes again, here
        run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])
    assert_same_run(ref, out)
    assert "resumed" in [e["event"] for e in logged(out, "events.jsonl")]
