-- `/metrics` counts busy threads and running runs at every scrape: partial indexes keep those
-- counts proportional to the busy threads and running runs, not to the tables. Each condition
-- is written exactly as the queries write it (SQLite uses a partial index only then).
create index threads_busy on threads (thread_id) where status = 'busy';
create index runs_running on runs (updated_at) where status = 'running';
