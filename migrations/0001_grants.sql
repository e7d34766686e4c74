-- Grants kept in PostgreSQL (issue 15): the grants, the revision counter
-- every write bumps, and the change log replicas follow.
--
-- Text columns compare as bytes (COLLATE "C"), the order the search pages
-- by and the order Rust compares strings in.

-- One row: the revision of the last committed write. A writer updates it
-- first in its transaction, which locks the row until commit: writers are
-- serialized and revisions follow commit order (a sequence would not).
CREATE TABLE portcullis_revision (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision bigint NOT NULL,
    -- Change log rows at or below this revision may have been pruned.
    pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO portcullis_revision (revision) VALUES (0);

-- holder_kind: 0 subject, 1 group, 2 every authenticated subject (holder '').
-- pattern: resource is a pattern's prefix ('document:' for document:*).
CREATE TABLE portcullis_grants (
    holder_kind smallint NOT NULL CHECK (holder_kind IN (0, 1, 2)),
    holder text COLLATE "C" NOT NULL,
    pattern boolean NOT NULL,
    resource text COLLATE "C" NOT NULL,
    role text COLLATE "C" NOT NULL,
    revision bigint NOT NULL,
    PRIMARY KEY (holder_kind, holder, pattern, resource, role)
);
-- (holder, resource) is the primary key: a decision's lookups and the
-- resource search ("which documents may alice read?") page along it.
-- (resource, holder): the subject search ("who may read document 1?").
CREATE INDEX portcullis_grants_by_resource
    ON portcullis_grants (pattern, resource, holder_kind, holder);

-- Every grant added or removed, under the revision of its write.
CREATE TABLE portcullis_grant_changes (
    revision bigint NOT NULL,
    holder_kind smallint NOT NULL,
    holder text COLLATE "C" NOT NULL,
    pattern boolean NOT NULL,
    resource text COLLATE "C" NOT NULL,
    role text COLLATE "C" NOT NULL,
    added boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portcullis_grant_changes_by_revision
    ON portcullis_grant_changes (revision);
