-- Every insert of a run and every change of its status writes each index of `runs`.
-- `runs_thread_created` (thread_id, created_at) was redundant with the prefix of
-- `runs_thread_status` (thread_id, status, created_at), which a thread's runs list uses (a
-- thread's runs are few; they are sorted after).
drop index runs_thread_created;
