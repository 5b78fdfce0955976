//! PostgreSQL encoding (sqlx): an id is a native `uuid` column.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef, Postgres};
use sqlx::{Decode, Encode, Type};
use uuid::Uuid;

use crate::*;

macro_rules! impl_postgres {
    ($t:ident) => {
        impl Type<Postgres> for $t {
            fn type_info() -> PgTypeInfo {
                <Uuid as Type<Postgres>>::type_info()
            }
        }

        impl PgHasArrayType for $t {
            fn array_type_info() -> PgTypeInfo {
                <Uuid as PgHasArrayType>::array_type_info()
            }
        }

        impl Encode<'_, Postgres> for $t {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <Uuid as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
            }
        }

        impl Decode<'_, Postgres> for $t {
            fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
                <Uuid as Decode<'_, Postgres>>::decode(value).map($t::from_uuid)
            }
        }
    };
}

for_each_id!(impl_postgres);
