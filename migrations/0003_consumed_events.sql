-- Signed events consumed once across replicas (issue 26): the id of every
-- accepted event until its envelope expires. A replica consumes an event
-- with one INSERT ... ON CONFLICT (id) DO NOTHING: of two replicas handed
-- the same envelope at once, the second waits on the first's row and
-- inserts nothing, so exactly one accepts it. consumer is the envelope's
-- audience (the verifying caller): each holds at most its share of the
-- replay capacity in unexpired rows. expires_at is the envelope's exp, in
-- seconds since the Unix epoch; `portcullis db prune` deletes rows an
-- hour past it (clocks may differ by less than that).
CREATE TABLE portcullis_consumed_events (
    id text COLLATE "C" PRIMARY KEY,
    consumer text COLLATE "C" NOT NULL,
    expires_at bigint NOT NULL
);
-- A consumer's unexpired rows, counted on each consume (its share).
CREATE INDEX portcullis_consumed_events_by_consumer
    ON portcullis_consumed_events (consumer, expires_at);
-- What prune deletes.
CREATE INDEX portcullis_consumed_events_by_expiry
    ON portcullis_consumed_events (expires_at);
