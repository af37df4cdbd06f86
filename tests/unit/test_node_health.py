"""The nodes of one archive judged from their heartbeat rows (echoes.ops.nodes): pure."""

from __future__ import annotations

from echoes.database.nodes import NodeRow
from echoes.ops import nodes


def row(name: str, silent: float = 2.0, stopped: bool = False, waiting: int = 0,
        roles: dict | None = None) -> NodeRow:
    return NodeRow(name, "host-" + name, 100, 0.0, silent, stopped,
                   roles or {"ingester": {"wanted": 1, "running": 1, "pids": [7]}}, waiting)


def test_roles_state_counts_running_slots_per_role() -> None:
    state = nodes.roles_state([("store", 10, True), ("store", None, False),
                               ("ingester", 12, True)], {"store": 2, "ingester": 1, "web": 1})
    assert state == {"store": {"wanted": 2, "running": 1, "pids": [10]},
                     "ingester": {"wanted": 1, "running": 1, "pids": [12]},
                     "web": {"wanted": 1, "running": 0, "pids": []}}


def test_this_node_is_left_to_the_local_probes() -> None:
    assert nodes.problems([row("a", silent=500)], "a", frozenset()) == []


def test_a_healthy_node_is_no_problem() -> None:
    assert nodes.problems([row("a"), row("b", silent=29)], "a", frozenset()) == []


def test_a_silent_node_is_critical_and_says_its_spool() -> None:
    assert nodes.problems([row("b", silent=47, waiting=12)], "a", frozenset()) == [
        (nodes.CRITICAL, "node b (host-b, pid 100) not seen for 47 s: down?; 12 objects "
                         "wait in its spool")]


def test_a_cleanly_stopped_node_is_a_warning() -> None:
    assert nodes.problems([row("b", silent=600, stopped=True)], "a", frozenset()) == [
        (nodes.WARNING, "node b (host-b, pid 100) stopped 10 min ago (echoes nodes --forget b "
                        "if it is gone for good)")]


def test_a_missing_process_is_critical_unless_optional() -> None:
    roles = {"ingester": {"wanted": 1, "running": 0}, "web": {"wanted": 1, "running": 0},
             "store": {"wanted": 2, "running": 2}}
    assert nodes.problems([row("b", roles=roles)], "a", frozenset({"web"})) == [
        (nodes.CRITICAL, "node b: ingester: 0 of 1 processes running"),
        (nodes.WARNING, "node b: web: 0 of 1 processes running")]


def test_ago_reads_like_an_admin_would_say_it() -> None:
    assert [nodes.ago(s) for s in (3, 119, 600, 7300, 200000)] == [
        "3 s", "119 s", "10 min", "2.0 h", "2.3 days"]


def test_this_nodes_row_written_by_another_supervisor_is_a_shared_node_name() -> None:
    mine = row("a")  # host-a, pid 100
    assert nodes.problems([mine], "a", frozenset(), here_is=("host-a", 100)) == []
    assert nodes.problems([mine], "a", frozenset(), here_is=("host-x", 100)) == [
        (nodes.CRITICAL, "node_name a is used by another node too (host-a, pid 100): give "
                         "each node its own node_name")]
    # a stale or cleanly stopped row of this name is this node's own earlier run
    assert nodes.problems([row("a", silent=40)], "a", frozenset(), here_is=("h", 1)) == []
    assert nodes.problems([row("a", stopped=True)], "a", frozenset(), here_is=("h", 1)) == []
