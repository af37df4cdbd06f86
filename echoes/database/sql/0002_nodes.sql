-- echoes schema 2: the nodes of one archive and their heartbeats.
-- Each node's supervisor writes its row every few seconds (echoes/processes/beacon.py);
-- echoes check on any node reads every row (echoes/ops/nodes.py).
-- Times are the database server's (now()): the nodes' clocks may differ.
CREATE TABLE nodes (
    node_name     text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    started       timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    -- true once the node stopped cleanly (echoes stop); a new start sets it false
    stopped       boolean NOT NULL DEFAULT false,
    -- role -> {"wanted": n, "running": n, "pids": [...]}
    roles         jsonb NOT NULL,
    -- objects acknowledged into the node's own spool and not yet ingested
    spool_waiting integer NOT NULL DEFAULT 0
);
