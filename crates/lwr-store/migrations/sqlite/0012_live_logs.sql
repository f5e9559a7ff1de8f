-- lwr schema 10: live logs shared by servers. The pieces of a running job's log its node
-- streamed (through any server), each byte once, kept until the run's log is stored; and who
-- wants a run's log streamed (a viewer on any server, or `live`), until `until_ms` unless
-- renewed.
CREATE TABLE live_log_pieces (
    run_id       BIGINT  NOT NULL,
    start_offset BIGINT  NOT NULL,
    data         BLOB    NOT NULL,
    last         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, start_offset)
);
CREATE TABLE live_log_wants (
    id       TEXT   PRIMARY KEY,
    run_id   BIGINT NOT NULL,
    node_id  BIGINT NOT NULL,
    until_ms BIGINT NOT NULL
);
CREATE INDEX live_log_wants_node ON live_log_wants (node_id);
CREATE INDEX live_log_wants_run ON live_log_wants (run_id);
