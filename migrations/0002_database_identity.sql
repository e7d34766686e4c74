-- The database's identity (issue 21): a random id written once, here.
-- Revisions handed to clients carry it ("<identity>.<n>"), and every
-- replica's change feed reads it with the revision on each poll. A
-- revision counter means something only within one history of one
-- database: after a point-in-time restore or a failover to a lagging
-- standby the counter goes back (or diverges), and a replica that
-- compared bare numbers would keep cached grants the restored database
-- no longer has. A changed identity (`portcullis db new-identity`, part
-- of the restore and failover runbook) or a revision lower than the one
-- a replica applied makes it drop its whole cache; a check carrying a
-- revision of another identity is refused.
ALTER TABLE portcullis_revision ADD COLUMN database_id text;
UPDATE portcullis_revision SET database_id = left(md5(gen_random_uuid()::text), 16);
ALTER TABLE portcullis_revision ALTER COLUMN database_id SET NOT NULL;
ALTER TABLE portcullis_revision
    ADD CONSTRAINT portcullis_revision_database_id_format
    CHECK (database_id ~ '^[0-9a-z]{1,64}$');
