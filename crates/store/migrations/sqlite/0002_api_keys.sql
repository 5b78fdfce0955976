-- API keys: only a SHA-256 of the key is stored; the key itself is shown once, at creation.
create table api_keys (
    key_id     blob primary key check (length(key_id) = 16),
    user_id    blob not null references users (user_id) on delete cascade,
    key_hash   text not null unique,
    -- the key's first characters, so an operator can tell keys apart
    prefix     text not null,
    created_at integer not null,
    revoked_at integer
) strict;
