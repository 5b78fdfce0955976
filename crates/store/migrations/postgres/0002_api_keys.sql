-- API keys: only a SHA-256 of the key is stored; the key itself is shown once, at creation.
create table api_keys (
    key_id     uuid primary key,
    user_id    uuid not null references users (user_id) on delete cascade,
    key_hash   text not null unique,
    -- the key's first characters, so an operator can tell keys apart
    prefix     text not null,
    created_at timestamptz not null,
    revoked_at timestamptz
);
