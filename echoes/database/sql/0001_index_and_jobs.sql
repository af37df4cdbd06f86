-- echoes schema 1: the archive index and the outbound job queue.
-- Applied by echoes start (echoes/database/migrations.py), in one transaction.
-- What people query (UIDs, names, dates, AE titles) is kept in plain columns.

-- One row per archived object (the instance document of echoes/index/instance.py).
CREATE TABLE instances (
    sop_instance_uid         text PRIMARY KEY,
    sop_class_uid            text NOT NULL,
    series_instance_uid      text NOT NULL,
    study_instance_uid       text NOT NULL,
    patient_id               text NOT NULL DEFAULT '',
    patient_name             text NOT NULL DEFAULT '',
    patient_birth_date       text NOT NULL DEFAULT '',
    patient_sex              text NOT NULL DEFAULT '',
    study_date               text NOT NULL DEFAULT '',
    study_time               text NOT NULL DEFAULT '',
    study_description        text NOT NULL DEFAULT '',
    accession_number         text NOT NULL DEFAULT '',
    referring_physician_name text NOT NULL DEFAULT '',
    study_id                 text NOT NULL DEFAULT '',
    modality                 text NOT NULL DEFAULT '',
    series_number            text NOT NULL DEFAULT '',
    series_description       text NOT NULL DEFAULT '',
    instance_number          text NOT NULL DEFAULT '',
    series_date              text NOT NULL DEFAULT '',
    body_part_examined       text NOT NULL DEFAULT '',
    rows                     text NOT NULL DEFAULT '',
    columns                  text NOT NULL DEFAULT '',
    number_of_frames         text NOT NULL DEFAULT '',
    transfer_syntax_uid      text NOT NULL DEFAULT '',
    path                     text NOT NULL,
    size                     bigint NOT NULL DEFAULT 0,
    received                 text NOT NULL DEFAULT '',
    calling_ae               text NOT NULL DEFAULT '',
    -- write order: the tie-break of "the newest instance" (later writes win)
    seq                      bigint NOT NULL
);
CREATE INDEX instances_study ON instances (study_instance_uid, seq);
CREATE SEQUENCE instances_seq;

-- One row per study: the summary echoes studies, the Browser and Q/R read.
CREATE TABLE studies (
    study_instance_uid       text PRIMARY KEY,
    patient_id               text NOT NULL,
    patient_name             text NOT NULL,
    patient_birth_date       text NOT NULL,
    patient_sex              text NOT NULL,
    study_date               text NOT NULL,
    study_time               text NOT NULL,
    study_description        text NOT NULL,
    accession_number         text NOT NULL,
    referring_physician_name text NOT NULL,
    study_id                 text NOT NULL,
    modalities_in_study      text[] NOT NULL,
    number_of_series         integer NOT NULL,
    number_of_instances      integer NOT NULL,
    size                     bigint NOT NULL,
    updated                  text NOT NULL,
    -- index_state.counter when this study last changed (its version token)
    changed                  bigint NOT NULL
);
CREATE INDEX studies_patient_id ON studies (patient_id);
CREATE INDEX studies_accession_number ON studies (accession_number);
CREATE INDEX studies_study_date ON studies (study_date, study_time);
CREATE INDEX studies_updated ON studies (updated);

-- The forms of a study's keys a C-FIND constraint compares with (the matching
-- engine's index_keys: multi-valued values under each value, names folded),
-- for exact values, date ranges and name prefixes; "C" collation: compared
-- as Python compares them.
CREATE TABLE study_keys (
    name               text NOT NULL,
    key                text COLLATE "C" NOT NULL,
    study_instance_uid text NOT NULL REFERENCES studies ON DELETE CASCADE,
    PRIMARY KEY (name, key, study_instance_uid)
);
CREATE INDEX study_keys_study ON study_keys (study_instance_uid);

-- One row per series of a study.
CREATE TABLE series (
    study_instance_uid                text NOT NULL REFERENCES studies ON DELETE CASCADE,
    series_instance_uid               text NOT NULL,
    modality                          text NOT NULL,
    series_number                     text NOT NULL,
    series_description                text NOT NULL,
    series_date                       text NOT NULL,
    body_part_examined                text NOT NULL,
    number_of_series_related_instances integer NOT NULL,
    PRIMARY KEY (study_instance_uid, series_instance_uid)
);

-- The index's version token: one row, counted up by every write.
CREATE TABLE index_state (
    id      integer PRIMARY KEY CHECK (id = 1),
    counter bigint NOT NULL
);
INSERT INTO index_state VALUES (1, 0);

-- Outbound jobs (echoes/queue/jobs.py: Job), one per object and destination.
CREATE TABLE jobs (
    id                 text PRIMARY KEY,
    destination        text NOT NULL,
    sop_instance_uid   text NOT NULL,
    study_instance_uid text NOT NULL,
    sop_class_uid      text NOT NULL,
    transfer_syntax    text NOT NULL,
    path               text NOT NULL,
    origin             text NOT NULL,
    state              text NOT NULL,
    attempts           integer NOT NULL,
    last_error         text NOT NULL,
    next_attempt       double precision NOT NULL,
    created            double precision NOT NULL,
    updated            double precision NOT NULL,
    -- the node whose sender holds the job, and until when (a claim)
    claimed_by         text NOT NULL DEFAULT '',
    claimed_until      double precision NOT NULL DEFAULT 0
);
-- what a sender claims: due jobs of a destination, oldest first
CREATE INDEX jobs_due ON jobs (destination, created, id)
    WHERE state IN ('pending', 'retrying');
CREATE INDEX jobs_by_state ON jobs (state, updated);
CREATE INDEX jobs_by_study ON jobs (study_instance_uid);

-- The job store's version token (the Browser's queue page caches by it):
-- counted up after each committed write (a sequence: no row lock between
-- the writers of several nodes).
CREATE SEQUENCE jobs_version;
