-- Users' assistants and their versions. Each change to an assistant is a new, immutable row
-- here; the `assistants` row keeps a copy of the version that is current (the newest, or the
-- one pinned with `POST /assistants/{id}/latest`).
create table assistant_versions (
    assistant_id blob not null references assistants (assistant_id) on delete cascade,
    version      integer not null,
    graph_id     text not null,
    name         text not null,
    description  text,
    config       text not null default '{}',
    context      text not null default '{}',
    metadata     text not null default '{}',
    created_at   integer not null,
    primary key (assistant_id, version)
) strict;

-- The assistants stored so far (the system ones) become their own first version.
insert into assistant_versions (assistant_id, version, graph_id, name, description, config, context, metadata, created_at)
select assistant_id, version, graph_id, name, description, config, context, metadata, updated_at from assistants;

-- A user's assistants, listed with the system ones.
create index assistants_owner_created on assistants (owner_id, created_at);
