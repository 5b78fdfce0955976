-- Streams of one run read its events in seq order: index them by (run_id, seq).
drop index events_run;
create index events_run_seq on events (run_id, seq) where run_id is not null;
