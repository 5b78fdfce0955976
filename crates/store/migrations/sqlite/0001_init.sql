-- Spindle schema, SQLite. Ids are 16-byte BLOBs (UUID bytes in order); times are INTEGER
-- microseconds since the Unix epoch; JSON is TEXT. Never edit once landed: add a migration.

create table users (
    user_id    blob primary key check (length(user_id) = 16),
    subject    text not null unique,
    created_at integer not null
) strict;

create table assistants (
    assistant_id blob primary key check (length(assistant_id) = 16),
    graph_id     text not null,
    name         text not null,
    description  text,
    config       text not null default '{}',
    context      text not null default '{}',
    metadata     text not null default '{}',
    version      integer not null default 1,
    -- null for built-in system assistants, which every user sees
    owner_id     blob references users (user_id) on delete cascade,
    created_at   integer not null,
    updated_at   integer not null
) strict;

create table threads (
    thread_id        blob primary key check (length(thread_id) = 16),
    owner_id         blob not null references users (user_id) on delete cascade,
    metadata         text not null default '{}',
    status           text not null default 'idle'
                     check (status in ('idle', 'busy', 'interrupted', 'error')),
    state_values     text,
    -- seq of the newest event; appends increment it in their transaction
    last_seq         integer not null default 0,
    created_at       integer not null,
    updated_at       integer not null,
    state_updated_at integer not null,
    -- target of the runs (thread_id, owner_id) key: a run's owner is its thread's owner
    unique (thread_id, owner_id)
) strict;

create index threads_owner_created on threads (owner_id, created_at);

create table runs (
    run_id             blob primary key check (length(run_id) = 16),
    thread_id          blob not null,
    owner_id           blob not null,
    assistant_id       blob not null check (length(assistant_id) = 16),
    status             text not null
                       check (status in ('pending', 'running', 'success', 'error', 'timeout', 'interrupted')),
    input              text,
    kwargs             text not null default '{}',
    metadata           text not null default '{}',
    multitask_strategy text not null
                       check (multitask_strategy in ('reject', 'enqueue', 'interrupt', 'rollback')),
    error              text,
    created_at         integer not null,
    updated_at         integer not null,
    foreign key (thread_id, owner_id) references threads (thread_id, owner_id) on delete cascade
) strict;

create index runs_thread_created on runs (thread_id, created_at);
create index runs_active on runs (status) where status in ('pending', 'running');

create table checkpoints (
    checkpoint_id        blob primary key check (length(checkpoint_id) = 16),
    thread_id            blob not null references threads (thread_id) on delete cascade,
    run_id               blob references runs (run_id) on delete set null,
    parent_checkpoint_id blob,
    state_values         text not null,
    metadata             text not null default '{}',
    created_at           integer not null
) strict;

create index checkpoints_thread on checkpoints (thread_id, checkpoint_id);

create table events (
    thread_id  blob not null references threads (thread_id) on delete cascade,
    seq        integer not null check (seq > 0),
    run_id     blob references runs (run_id) on delete cascade,
    kind       text not null,
    data       text not null,
    created_at integer not null,
    primary key (thread_id, seq)
) strict, without rowid;

create index events_run on events (run_id) where run_id is not null;
