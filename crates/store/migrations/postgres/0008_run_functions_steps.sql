-- The run path's functions (0006) learn what the store's transaction path does since a run's
-- first step can fork and a thread's first step writes its state before the input:
--
-- * every checkpoint they write has `step` in its metadata, its parent's plus one (a parent
--   without an integer `step` counts as -1), -1 without a parent; they return it;
-- * a step can fork (p_from): its parent is that checkpoint of the thread, and its values were
--   computed by the server from that checkpoint's (which never change), so the thread's
--   `state_version` is not checked, only bumped; a checkpoint the thread does not have is
--   'checkpoint_not_found', nothing written;
-- * a thread's first step can write the state before the input first (p_initial_*): when the
--   thread has no checkpoint yet (and p_from is null), that checkpoint is inserted, without a
--   parent (step -1), and becomes the step's parent;
-- * a run's end sets the thread's status the server gives (p_end_thread_status: `idle`,
--   `interrupted`, `error`), unless another run of the thread is active (`busy`).
--
-- The functions are replaced, with new signatures: a node running an older version (which
-- calls the old ones) must be stopped before this migration runs, as for 0006.

drop function spindle_start_run(
    uuid, uuid, uuid, uuid, jsonb, jsonb, jsonb, text, jsonb, boolean, boolean, timestamptz,
    bigint, jsonb, uuid, jsonb, uuid[], text[], text[]);
drop function spindle_commit_step(
    uuid, uuid, uuid, timestamptz, bigint, jsonb, uuid, jsonb, text, text, uuid[], text[], text[]);

-- A checkpoint's `step` from its metadata: -1 when it is missing or not an integer (one that
-- does not fit comfortably in a bigint counts as none). The Rust side's `step_of!` calls it.
create function spindle_checkpoint_step(p_metadata jsonb) returns bigint
language sql immutable as $$
    select coalesce(
        case when jsonb_typeof(p_metadata -> 'step') = 'number'
                  and (p_metadata ->> 'step') ~ '^-?[0-9]{1,18}$'
             then (p_metadata ->> 'step')::bigint end,
        -1)
$$;

-- Inserts a step's checkpoint p_checkpoint (the caller holds the thread's row lock): its
-- parent is p_from, or the thread's newest checkpoint; with neither and p_initial_checkpoint,
-- that checkpoint (p_initial_values, p_initial_metadata) is inserted first, without a parent,
-- and is the parent. Returns the parent and the step written into the checkpoint's metadata.
-- The caller has checked that p_from is a checkpoint of the thread.
create function spindle_insert_step_checkpoint(
    p_thread uuid, p_run uuid, p_at timestamptz, p_from uuid,
    p_checkpoint uuid, p_values jsonb, p_metadata jsonb,
    p_initial_checkpoint uuid, p_initial_values jsonb, p_initial_metadata jsonb,
    out o_parent uuid, out o_step bigint
) language plpgsql as $$
declare
    v_parent_step bigint;
begin
    if p_from is not null then
        select c.checkpoint_id, spindle_checkpoint_step(c.metadata) into o_parent, v_parent_step
        from checkpoints c where c.checkpoint_id = p_from and c.thread_id = p_thread;
        if not found then
            raise exception 'checkpoint % is not a checkpoint of thread %', p_from, p_thread;
        end if;
    else
        select c.checkpoint_id, spindle_checkpoint_step(c.metadata) into o_parent, v_parent_step
        from checkpoints c where c.thread_id = p_thread order by c.checkpoint_id desc limit 1;
        -- The state before the input belongs to no run: a rollback of the first run keeps it.
        if o_parent is null and p_initial_checkpoint is not null then
            insert into checkpoints (checkpoint_id, thread_id, run_id, parent_checkpoint_id,
                                     state_values, metadata, created_at)
            values (p_initial_checkpoint, p_thread, null, null, p_initial_values,
                    p_initial_metadata || jsonb_build_object('step', -1), p_at);
            o_parent := p_initial_checkpoint;
            v_parent_step := -1;
        end if;
    end if;
    o_step := case when o_parent is null then -1 else v_parent_step + 1 end;
    insert into checkpoints (checkpoint_id, thread_id, run_id, parent_checkpoint_id,
                             state_values, metadata, created_at)
    values (p_checkpoint, p_thread, p_run, o_parent, p_values,
            p_metadata || jsonb_build_object('step', o_step), p_at);
end
$$;

-- Creates a run (and with p_create its thread, if missing). With p_claim and no active run
-- on the thread, the run is created 'running' (claimed here) and, when p_values is given and
-- either p_from is given or the thread's state is at p_expected_version, its first step is
-- committed with it: the state, a checkpoint (see spindle_insert_step_checkpoint) and the
-- events p_event_* (numbered from the thread's last_seq).
--
-- o_outcome: 'not_found' | 'conflict' (another owner's thread, with p_create) | 'busy'
-- (p_strategy 'reject' and an active run) | 'checkpoint_not_found' (the run would be claimed
-- and p_from is not a checkpoint of the thread; nothing written) | 'created' (no step
-- written) | 'started' (the step written too: o_parent, o_step and o_version are its).
create function spindle_start_run(
    p_run uuid, p_thread uuid, p_owner uuid, p_assistant uuid,
    p_input jsonb, p_kwargs jsonb, p_metadata jsonb, p_strategy text,
    p_thread_metadata jsonb, p_create boolean, p_claim boolean, p_at timestamptz,
    p_expected_version bigint, p_values jsonb, p_checkpoint uuid, p_checkpoint_metadata jsonb,
    p_from uuid, p_initial_checkpoint uuid, p_initial_values jsonb, p_initial_metadata jsonb,
    p_event_runs uuid[], p_event_kinds text[], p_event_data text[]
) returns table (
    o_outcome text, o_status text, o_replaced uuid[], o_first_seq bigint, o_parent uuid,
    o_version bigint, o_step bigint
) language plpgsql as $$
declare
    v_owner uuid;
    v_busy boolean;
    v_version bigint;
    v_status text := 'pending';
    v_replaced uuid[] := '{}';
    v_parent uuid;
    v_step bigint;
    v_last bigint;
    v_n integer := coalesce(cardinality(p_event_kinds), 0);
begin
    if p_create then
        -- A fork of a thread that does not exist yet: its checkpoint cannot exist either
        -- (nor come to), and the thread is not created.
        if p_from is not null and not exists (select 1 from threads t where t.thread_id = p_thread) then
            return query select 'checkpoint_not_found', null::text, null::uuid[], null::bigint,
                null::uuid, null::bigint, null::bigint;
            return;
        end if;
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
        return query select 'not_found', null::text, null::uuid[], null::bigint, null::uuid,
            null::bigint, null::bigint;
        return;
    end if;
    if v_owner <> p_owner then
        return query select 'conflict', null::text, null::uuid[], null::bigint, null::uuid,
            null::bigint, null::bigint;
        return;
    end if;
    select exists (select 1 from runs r where r.thread_id = p_thread and r.status = 'running')
        or exists (select 1 from runs r where r.thread_id = p_thread and r.status = 'pending')
    into v_busy;
    if v_busy then
        if p_strategy = 'reject' then
            return query select 'busy', null::text, null::uuid[], null::bigint, null::uuid,
                null::bigint, null::bigint;
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
        -- A claimed run's first step is committed here or by the executor: a fork from a
        -- checkpoint the thread does not have fails now, before anything is written (a run
        -- left pending meets it when the executor commits its first step).
        if p_from is not null and not exists (
            select 1 from checkpoints c where c.checkpoint_id = p_from and c.thread_id = p_thread
        ) then
            return query select 'checkpoint_not_found', null::text, null::uuid[], null::bigint,
                null::uuid, null::bigint, null::bigint;
            return;
        end if;
    end if;
    insert into runs (run_id, thread_id, owner_id, assistant_id, status, input, kwargs, metadata,
                      multitask_strategy, error, created_at, updated_at)
    values (p_run, p_thread, p_owner, p_assistant, v_status, p_input, p_kwargs, p_metadata,
            p_strategy, null, p_at, p_at);
    if v_status = 'running' and p_values is not null
       and (p_from is not null or v_version = p_expected_version) then
        select s.o_parent, s.o_step into v_parent, v_step
        from spindle_insert_step_checkpoint(p_thread, p_run, p_at, p_from, p_checkpoint,
            p_values, p_checkpoint_metadata, p_initial_checkpoint, p_initial_values,
            p_initial_metadata) s;
        update threads t set status = 'busy', metadata = t.metadata || p_thread_metadata,
               updated_at = p_at, state_values = p_values, state_version = nextval('state_versions'),
               state_updated_at = p_at, last_seq = t.last_seq + v_n
        where t.thread_id = p_thread
        returning t.last_seq, t.state_version into v_last, v_version;
        insert into events (thread_id, seq, run_id, kind, data, created_at)
        select p_thread, v_last - v_n + u.ord, u.run_id, u.kind, u.data::jsonb, p_at
        from unnest(p_event_runs, p_event_kinds, p_event_data) with ordinality as u(run_id, kind, data, ord);
        return query select 'started', v_status, v_replaced, v_last - v_n + 1, v_parent,
            v_version, v_step;
        return;
    end if;
    update threads t set status = 'busy', metadata = t.metadata || p_thread_metadata, updated_at = p_at
    where t.thread_id = p_thread;
    return query select 'created', v_status, v_replaced, null::bigint, null::uuid, v_version,
        null::bigint;
end
$$;

-- One step of a running run: with p_values, the thread's new state (only if p_from is given
-- or the state is still at p_expected_version) and its checkpoint (see
-- spindle_insert_step_checkpoint: p_from and p_initial_* make it a run's first step); with
-- p_end_status, the run's end (only a running run ends) and the thread's status
-- p_end_thread_status, or 'busy' while another run of the thread is active; and the events
-- p_event_*, numbered from the thread's last_seq.
--
-- o_outcome: 'not_found' (no such thread of p_owner) | 'stale' (nothing written) |
-- 'checkpoint_not_found' (p_from is not a checkpoint of the thread; nothing written) |
-- 'ended' (the run is not running; nothing written) | 'ok'. With p_values, o_parent and
-- o_step are the checkpoint's. With an end, r_* is the ended run.
create function spindle_commit_step(
    p_owner uuid, p_thread uuid, p_run uuid, p_at timestamptz,
    p_expected_version bigint, p_values jsonb, p_checkpoint uuid, p_checkpoint_metadata jsonb,
    p_from uuid, p_initial_checkpoint uuid, p_initial_values jsonb, p_initial_metadata jsonb,
    p_end_status text, p_end_error text, p_end_thread_status text,
    p_event_runs uuid[], p_event_kinds text[], p_event_data text[]
) returns table (
    o_outcome text, o_first_seq bigint, o_parent uuid, o_version bigint, o_step bigint,
    r_run_id uuid, r_thread_id uuid, r_owner_id uuid, r_assistant_id uuid, r_status text,
    r_input jsonb, r_kwargs jsonb, r_metadata jsonb, r_multitask_strategy text, r_error text,
    r_created_at timestamptz, r_updated_at timestamptz
) language plpgsql as $$
declare
    v_version bigint;
    v_parent uuid;
    v_step bigint;
    v_last bigint;
    v_thread_status text;
    v_run runs%rowtype;
    v_n integer := coalesce(cardinality(p_event_kinds), 0);
begin
    select t.state_version into v_version from threads t
    where t.thread_id = p_thread and t.owner_id = p_owner for update;
    if not found then
        return query select 'not_found', null::bigint, null::uuid, null::bigint, null::bigint,
            null::uuid, null::uuid, null::uuid, null::uuid, null::text, null::jsonb, null::jsonb,
            null::jsonb, null::text, null::text, null::timestamptz, null::timestamptz;
        return;
    end if;
    if p_values is not null and p_from is null and v_version <> p_expected_version then
        return query select 'stale', null::bigint, null::uuid, v_version, null::bigint,
            null::uuid, null::uuid, null::uuid, null::uuid, null::text, null::jsonb, null::jsonb,
            null::jsonb, null::text, null::text, null::timestamptz, null::timestamptz;
        return;
    end if;
    if p_values is not null and p_from is not null and not exists (
        select 1 from checkpoints c where c.checkpoint_id = p_from and c.thread_id = p_thread
    ) then
        return query select 'checkpoint_not_found', null::bigint, null::uuid, null::bigint,
            null::bigint, null::uuid, null::uuid, null::uuid, null::uuid, null::text, null::jsonb,
            null::jsonb, null::jsonb, null::text, null::text, null::timestamptz,
            null::timestamptz;
        return;
    end if;
    if p_end_status is not null then
        update runs r set status = p_end_status, error = p_end_error, updated_at = p_at
        where r.run_id = p_run and r.thread_id = p_thread and r.owner_id = p_owner
          and r.status = 'running'
        returning r.* into v_run;
        if not found then
            return query select 'ended', null::bigint, null::uuid, null::bigint, null::bigint,
                null::uuid, null::uuid, null::uuid, null::uuid, null::text, null::jsonb,
                null::jsonb, null::jsonb, null::text, null::text, null::timestamptz,
                null::timestamptz;
            return;
        end if;
        v_thread_status := case
            when exists (select 1 from runs r where r.thread_id = p_thread and r.status in ('pending', 'running')) then 'busy'
            else p_end_thread_status end;
    end if;
    if p_values is not null then
        select s.o_parent, s.o_step into v_parent, v_step
        from spindle_insert_step_checkpoint(p_thread, p_run, p_at, p_from, p_checkpoint,
            p_values, p_checkpoint_metadata, p_initial_checkpoint, p_initial_values,
            p_initial_metadata) s;
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
    return query select 'ok', v_last - v_n + 1, v_parent, v_version, v_step, v_run.run_id,
        v_run.thread_id, v_run.owner_id, v_run.assistant_id, v_run.status, v_run.input,
        v_run.kwargs, v_run.metadata, v_run.multitask_strategy, v_run.error, v_run.created_at,
        v_run.updated_at;
end
$$;
