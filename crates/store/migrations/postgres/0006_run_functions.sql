-- A run's hot path in one round trip per transaction. Each function is one statement of the
-- caller's, so one transaction; inside it (a volatile PL/pgSQL function under READ COMMITTED)
-- every statement takes a fresh snapshot after the thread's row lock, exactly as the
-- statement-by-statement transactions they replace did.
--
-- A run's state update is computed by the server (the messages reducer lives there) from the
-- thread's values at a known `state_version`; the function applies it only if the thread is
-- still at that version, and otherwise answers 'stale' having written nothing of the step,
-- so the server reads the current values and tries again.

-- Versions come from one sequence, so no two writes of any threads' states share one: a
-- state cached for a thread that was deleted and created again under the same id can never
-- match the new thread's version by chance. A new thread's state is version 0 (no values).
-- Every writer of `state_values` must set `state_version`: a node of an older version
-- (which does not) must be stopped before this migration runs (Spindle runs one node per
-- database today).
create sequence state_versions;
alter table threads add column state_version bigint not null default 0;

-- Creates a run (and with p_create its thread, if missing). With p_claim and no active run
-- on the thread, the run is created 'running' (claimed here) and, when p_values is given and
-- the thread's state is at p_expected_version, its first step is committed with it: the
-- state, a checkpoint and the events p_event_* (numbered from the thread's last_seq).
--
-- o_outcome: 'not_found' | 'conflict' (another owner's thread, with p_create) | 'busy'
-- (p_strategy 'reject' and an active run) | 'created' (no step written) | 'started' (the
-- step written too).
create function spindle_start_run(
    p_run uuid, p_thread uuid, p_owner uuid, p_assistant uuid,
    p_input jsonb, p_kwargs jsonb, p_metadata jsonb, p_strategy text,
    p_thread_metadata jsonb, p_create boolean, p_claim boolean, p_at timestamptz,
    p_expected_version bigint, p_values jsonb, p_checkpoint uuid, p_checkpoint_metadata jsonb,
    p_event_runs uuid[], p_event_kinds text[], p_event_data text[]
) returns table (
    o_outcome text, o_status text, o_replaced uuid[], o_first_seq bigint, o_parent uuid,
    o_version bigint
) language plpgsql as $$
declare
    v_owner uuid;
    v_busy boolean;
    v_version bigint;
    v_status text := 'pending';
    v_replaced uuid[] := '{}';
    v_parent uuid;
    v_last bigint;
    v_n integer := coalesce(cardinality(p_event_kinds), 0);
begin
    if p_create then
        insert into threads (thread_id, owner_id, metadata, status, state_values, last_seq,
                             created_at, updated_at, state_updated_at)
        values (p_thread, p_owner, '{}', 'idle', null, 0, p_at, p_at, p_at)
        on conflict do nothing;
    end if;
    -- The row lock serializes run creation per thread. Whether the thread has an active run
    -- is asked in a statement of its own, after the lock: its snapshot is taken then, so it
    -- sees every run committed before the lock was granted (a subquery of the locking
    -- statement would use the snapshot from before the wait).
    select t.owner_id, t.state_version into v_owner, v_version
    from threads t where t.thread_id = p_thread for update;
    if not found or (v_owner <> p_owner and not p_create) then
        return query select 'not_found', null::text, null::uuid[], null::bigint, null::uuid, null::bigint;
        return;
    end if;
    if v_owner <> p_owner then
        return query select 'conflict', null::text, null::uuid[], null::bigint, null::uuid, null::bigint;
        return;
    end if;
    select exists (select 1 from runs r where r.thread_id = p_thread and r.status = 'running')
        or exists (select 1 from runs r where r.thread_id = p_thread and r.status = 'pending')
    into v_busy;
    if v_busy then
        if p_strategy = 'reject' then
            return query select 'busy', null::text, null::uuid[], null::bigint, null::uuid, null::bigint;
            return;
        elsif p_strategy = 'interrupt' then
            with u as (
                update runs r set status = 'interrupted', updated_at = p_at
                where r.thread_id = p_thread and r.status = 'pending' returning r.run_id
            ) select coalesce(array_agg(u.run_id), '{}') into v_replaced from u;
        elsif p_strategy = 'rollback' then
            with d as (
                delete from runs r where r.thread_id = p_thread and r.status = 'pending'
                returning r.run_id
            ) select coalesce(array_agg(d.run_id), '{}') into v_replaced from d;
        end if;
    elsif p_claim then
        v_status := 'running';
    end if;
    insert into runs (run_id, thread_id, owner_id, assistant_id, status, input, kwargs, metadata,
                      multitask_strategy, error, created_at, updated_at)
    values (p_run, p_thread, p_owner, p_assistant, v_status, p_input, p_kwargs, p_metadata,
            p_strategy, null, p_at, p_at);
    if v_status = 'running' and p_values is not null and v_version = p_expected_version then
        select c.checkpoint_id into v_parent from checkpoints c
        where c.thread_id = p_thread order by c.checkpoint_id desc limit 1;
        update threads t set status = 'busy', metadata = t.metadata || p_thread_metadata,
               updated_at = p_at, state_values = p_values, state_version = nextval('state_versions'),
               state_updated_at = p_at, last_seq = t.last_seq + v_n
        where t.thread_id = p_thread
        returning t.last_seq, t.state_version into v_last, v_version;
        insert into checkpoints (checkpoint_id, thread_id, run_id, parent_checkpoint_id,
                                 state_values, metadata, created_at)
        values (p_checkpoint, p_thread, p_run, v_parent, p_values, p_checkpoint_metadata, p_at);
        insert into events (thread_id, seq, run_id, kind, data, created_at)
        select p_thread, v_last - v_n + u.ord, u.run_id, u.kind, u.data::jsonb, p_at
        from unnest(p_event_runs, p_event_kinds, p_event_data) with ordinality as u(run_id, kind, data, ord);
        return query select 'started', v_status, v_replaced, v_last - v_n + 1, v_parent, v_version;
        return;
    end if;
    update threads t set status = 'busy', metadata = t.metadata || p_thread_metadata, updated_at = p_at
    where t.thread_id = p_thread;
    return query select 'created', v_status, v_replaced, null::bigint, null::uuid, v_version;
end
$$;

-- One step of a running run: with p_values, the thread's new state (only if the state is
-- still at p_expected_version) and its checkpoint; with p_end_status, the run's end (only a
-- running run ends) and the thread's status to match; and the events p_event_*, numbered
-- from the thread's last_seq.
--
-- o_outcome: 'not_found' (no such thread of p_owner) | 'stale' (nothing written) | 'ended'
-- (the run is not running; nothing written) | 'ok'. With an end, r_* is the ended run.
create function spindle_commit_step(
    p_owner uuid, p_thread uuid, p_run uuid, p_at timestamptz,
    p_expected_version bigint, p_values jsonb, p_checkpoint uuid, p_checkpoint_metadata jsonb,
    p_end_status text, p_end_error text,
    p_event_runs uuid[], p_event_kinds text[], p_event_data text[]
) returns table (
    o_outcome text, o_first_seq bigint, o_parent uuid, o_version bigint,
    r_run_id uuid, r_thread_id uuid, r_owner_id uuid, r_assistant_id uuid, r_status text,
    r_input jsonb, r_kwargs jsonb, r_metadata jsonb, r_multitask_strategy text, r_error text,
    r_created_at timestamptz, r_updated_at timestamptz
) language plpgsql as $$
declare
    v_version bigint;
    v_parent uuid;
    v_last bigint;
    v_thread_status text;
    v_run runs%rowtype;
    v_n integer := coalesce(cardinality(p_event_kinds), 0);
begin
    select t.state_version into v_version from threads t
    where t.thread_id = p_thread and t.owner_id = p_owner for update;
    if not found then
        return query select 'not_found', null::bigint, null::uuid, null::bigint, null::uuid, null::uuid,
            null::uuid, null::uuid, null::text, null::jsonb, null::jsonb, null::jsonb, null::text,
            null::text, null::timestamptz, null::timestamptz;
        return;
    end if;
    if p_values is not null and v_version <> p_expected_version then
        return query select 'stale', null::bigint, null::uuid, v_version, null::uuid, null::uuid,
            null::uuid, null::uuid, null::text, null::jsonb, null::jsonb, null::jsonb, null::text,
            null::text, null::timestamptz, null::timestamptz;
        return;
    end if;
    if p_end_status is not null then
        update runs r set status = p_end_status, error = p_end_error, updated_at = p_at
        where r.run_id = p_run and r.thread_id = p_thread and r.owner_id = p_owner
          and r.status = 'running'
        returning r.* into v_run;
        if not found then
            return query select 'ended', null::bigint, null::uuid, null::bigint, null::uuid, null::uuid,
                null::uuid, null::uuid, null::text, null::jsonb, null::jsonb, null::jsonb, null::text,
                null::text, null::timestamptz, null::timestamptz;
            return;
        end if;
        v_thread_status := case
            when exists (select 1 from runs r where r.thread_id = p_thread and r.status in ('pending', 'running')) then 'busy'
            when p_end_status in ('success', 'interrupted') then 'idle'
            else 'error' end;
    end if;
    if p_values is not null then
        select c.checkpoint_id into v_parent from checkpoints c
        where c.thread_id = p_thread order by c.checkpoint_id desc limit 1;
        insert into checkpoints (checkpoint_id, thread_id, run_id, parent_checkpoint_id,
                                 state_values, metadata, created_at)
        values (p_checkpoint, p_thread, p_run, v_parent, p_values, p_checkpoint_metadata, p_at);
    end if;
    update threads t set
        state_values = coalesce(p_values, t.state_values),
        state_version = case when p_values is null then t.state_version else nextval('state_versions') end,
        state_updated_at = case when p_values is null then t.state_updated_at else p_at end,
        status = coalesce(v_thread_status, t.status),
        last_seq = t.last_seq + v_n,
        updated_at = p_at
    where t.thread_id = p_thread
    returning t.last_seq, t.state_version into v_last, v_version;
    if v_n > 0 then
        insert into events (thread_id, seq, run_id, kind, data, created_at)
        select p_thread, v_last - v_n + u.ord, u.run_id, u.kind, u.data::jsonb, p_at
        from unnest(p_event_runs, p_event_kinds, p_event_data) with ordinality as u(run_id, kind, data, ord);
    end if;
    return query select 'ok', v_last - v_n + 1, v_parent, v_version, v_run.run_id, v_run.thread_id,
        v_run.owner_id, v_run.assistant_id, v_run.status, v_run.input, v_run.kwargs, v_run.metadata,
        v_run.multitask_strategy, v_run.error, v_run.created_at, v_run.updated_at;
end
$$;
