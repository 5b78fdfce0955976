-- Spindle schema, PostgreSQL. Mirrors migrations/sqlite/0001_init.sql with native types.
-- Never edit once landed (sqlx checks the checksum): add a migration.

create table users (
    user_id    uuid primary key,
    subject    text not null unique,
    created_at timestamptz not null
);

create table assistants (
    assistant_id uuid primary key,
    graph_id     text not null,
    name         text not null,
    description  text,
    config       jsonb not null default '{}',
    context      jsonb not null default '{}',
    metadata     jsonb not null default '{}',
    version      bigint not null default 1,
    -- null for built-in system assistants, which every user sees
    owner_id     uuid references users (user_id) on delete cascade,
    created_at   timestamptz not null,
    updated_at   timestamptz not null
);

create table threads (
    thread_id        uuid primary key,
    owner_id         uuid not null references users (user_id) on delete cascade,
    metadata         jsonb not null default '{}',
    status           text not null default 'idle'
                     check (status in ('idle', 'busy', 'interrupted', 'error')),
    state_values     jsonb,
    -- seq of the newest event; appends increment it in their transaction
    last_seq         bigint not null default 0,
    created_at       timestamptz not null,
    updated_at       timestamptz not null,
    state_updated_at timestamptz not null,
    -- target of the runs (thread_id, owner_id) key: a run's owner is its thread's owner
    unique (thread_id, owner_id)
);

create index threads_owner_created on threads (owner_id, created_at);
create index threads_metadata on threads using gin (metadata jsonb_path_ops);

create table runs (
    run_id             uuid primary key,
    thread_id          uuid not null,
    owner_id           uuid not null,
    assistant_id       uuid not null,
    status             text not null
                       check (status in ('pending', 'running', 'success', 'error', 'timeout', 'interrupted')),
    input              jsonb,
    kwargs             jsonb not null default '{}',
    metadata           jsonb not null default '{}',
    multitask_strategy text not null
                       check (multitask_strategy in ('reject', 'enqueue', 'interrupt', 'rollback')),
    error              text,
    created_at         timestamptz not null,
    updated_at         timestamptz not null,
    foreign key (thread_id, owner_id) references threads (thread_id, owner_id) on delete cascade
);

create index runs_thread_created on runs (thread_id, created_at);
create index runs_active on runs (status) where status in ('pending', 'running');

create table checkpoints (
    checkpoint_id        uuid primary key,
    thread_id            uuid not null references threads (thread_id) on delete cascade,
    run_id               uuid references runs (run_id) on delete set null,
    parent_checkpoint_id uuid,
    state_values         jsonb not null,
    metadata             jsonb not null default '{}',
    created_at           timestamptz not null
);

create index checkpoints_thread on checkpoints (thread_id, checkpoint_id);

create table events (
    thread_id  uuid not null references threads (thread_id) on delete cascade,
    seq        bigint not null check (seq > 0),
    run_id     uuid references runs (run_id) on delete cascade,
    kind       text not null,
    data       jsonb not null,
    created_at timestamptz not null,
    primary key (thread_id, seq)
);

create index events_run on events (run_id) where run_id is not null;
