-- LangGraph's own checkpoints, written by the checkpointer of a Python worker running a user's
-- graph, in the official savers' layout (docs/langgraph-workers.md §3.5): a checkpoint without
-- its channel values, each channel's value at each version once, and the pending writes of
-- each task. Every row is under a thread (invariant 2): deleting the thread deletes them.
-- Writes have no foreign key to their checkpoint, as in the official savers: LangGraph may
-- store a step's writes before the checkpoint they hang on.
create table graph_checkpoints (
    thread_id            uuid not null references threads (thread_id) on delete cascade,
    checkpoint_ns        text not null default '',
    checkpoint_id        uuid not null,
    parent_checkpoint_id uuid,
    -- LangGraph's checkpoint object without channel_values
    checkpoint           jsonb not null,
    metadata             jsonb not null default '{}',
    primary key (thread_id, checkpoint_ns, checkpoint_id)
);

create table graph_checkpoint_blobs (
    thread_id     uuid not null references threads (thread_id) on delete cascade,
    checkpoint_ns text not null default '',
    channel       text not null,
    version       text not null,
    -- the serializer's type; 'empty' (and no blob) for a channel without a value
    type          text not null,
    blob          bytea,
    primary key (thread_id, checkpoint_ns, channel, version)
);

create table graph_checkpoint_writes (
    thread_id     uuid not null references threads (thread_id) on delete cascade,
    checkpoint_ns text not null default '',
    checkpoint_id uuid not null,
    task_id       text not null,
    -- the write's position in its call, or a special channel's negative index
    idx           integer not null,
    channel       text not null,
    type          text not null,
    blob          bytea not null,
    task_path     text not null default '',
    primary key (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
