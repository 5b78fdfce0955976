-- The run queue: claims read pending runs oldest first and look up a thread's runs by
-- status. `status = 'pending'` must match the partial index's condition exactly for SQLite to
-- use it, so the pending index has exactly that condition.
drop index runs_active;
create index runs_pending on runs (created_at, run_id) where status = 'pending';
create index runs_thread_status on runs (thread_id, status, created_at);
