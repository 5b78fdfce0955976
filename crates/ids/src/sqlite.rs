//! SQLite encoding (rusqlite): an id is a 16-byte BLOB, the UUID's bytes in order, so
//! UUIDv7 ids sort by time in an index.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use uuid::Uuid;

use crate::*;

macro_rules! impl_sqlite {
    ($t:ident) => {
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::Borrowed(ValueRef::Blob(self.as_bytes())))
            }
        }

        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let blob = value.as_blob()?;
                let bytes: [u8; 16] = blob.try_into().map_err(|_| {
                    FromSqlError::InvalidBlobSize { expected_size: 16, blob_size: blob.len() }
                })?;
                Ok($t::from_uuid(Uuid::from_bytes(bytes)))
            }
        }
    };
}

for_each_id!(impl_sqlite);
