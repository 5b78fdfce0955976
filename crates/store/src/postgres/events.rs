//! PostgreSQL: a thread's events (append, read after a seq).

use chrono::{DateTime, Utc};
use ids::{RunId, ThreadId, UserId};
use sqlx::{PgConnection, Row};

use crate::json;
use crate::model::*;
use crate::{Error, Result};

use super::{PgStore, parsed};

impl PgStore {
    pub async fn append_events(
        &self,
        owner: UserId,
        thread: ThreadId,
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        append_in(&mut conn, owner, thread, events).await
    }

    pub async fn events_after(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        // One statement, one snapshot: the owner check and the rows agree.
        let rows = sqlx::query(
            "select e.seq, e.run_id, e.kind, e.data, e.created_at
             from threads t left join events e on e.thread_id = t.thread_id and e.seq > $2
                  and ($5::uuid is null or e.run_id = $5)
             where t.thread_id = $1 and t.owner_id = $3
             order by e.seq limit $4",
        )
        .bind(thread)
        .bind(after)
        .bind(owner)
        .bind(i64::from(limit))
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(Error::not_found("thread", thread));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(seq) = r.try_get::<Option<i64>, _>(0)? else { continue };
            out.push(Event {
                thread_id: thread,
                seq,
                run_id: r.try_get(1)?,
                kind: parsed(r, 2)?,
                data: r.try_get(3).map_err(|e| {
                    Error::unreadable("event", format_args!("{thread} seq {seq}"), e)
                })?,
                created_at: r.try_get(4)?,
            });
        }
        Ok(out)
    }
}

/// Appends events numbered from the thread's `last_seq`. One statement, so one implicit
/// transaction when run alone: the thread's row lock (taken by the update) orders concurrent
/// appenders, and a failed insert rolls the counter back.
pub(super) async fn append_in(
    conn: &mut PgConnection,
    owner: UserId,
    thread: ThreadId,
    events: &[NewEvent],
) -> Result<Vec<Event>> {
    let created_at = now();
    let encoded = EncodedEvents::new(events)?;
    // One statement, so one implicit transaction: the thread's row lock (taken by the
    // update) orders concurrent appenders, and a failed insert rolls the counter back.
    let seqs: Vec<i64> = sqlx::query_scalar(
            "with t as (
                 update threads set last_seq = last_seq + cardinality($4::text[])
                 where thread_id = $1 and owner_id = $2
                 returning last_seq
             )
             insert into events (thread_id, seq, run_id, kind, data, created_at)
             select $1, t.last_seq - cardinality($4::text[]) + u.ord, u.run_id, u.kind, u.data::jsonb, $6
             from t, unnest($3::uuid[], $4::text[], $5::text[]) with ordinality as u(run_id, kind, data, ord)
             returning seq",
        )
        .bind(thread)
        .bind(owner)
        .bind(&encoded.runs)
        .bind(&encoded.kinds)
        .bind(&encoded.data)
        .bind(created_at)
        .fetch_all(&mut *conn)
        .await?;
    if seqs.is_empty() {
        return Err(Error::not_found("thread", thread));
    }
    let first = seqs.iter().copied().min().unwrap_or_default();
    Ok(numbered(thread, first, events.to_vec(), created_at))
}

/// Events as the three arrays the functions take (`unnest`ed there, in order).
pub(super) struct EncodedEvents {
    pub(super) runs: Vec<Option<RunId>>,
    pub(super) kinds: Vec<&'static str>,
    pub(super) data: Vec<String>,
}

impl EncodedEvents {
    pub(super) fn new(events: &[NewEvent]) -> Result<EncodedEvents> {
        Ok(EncodedEvents {
            runs: events.iter().map(|e| e.run_id).collect(),
            kinds: events.iter().map(|e| e.kind.as_str()).collect(),
            data: events
                .iter()
                .map(|e| json::encode("event data", &e.data, false))
                .collect::<Result<_>>()?,
        })
    }
}

/// Appended events, numbered from `first`.
pub(super) fn numbered(
    thread: ThreadId,
    first: i64,
    events: Vec<NewEvent>,
    created_at: DateTime<Utc>,
) -> Vec<Event> {
    events
        .into_iter()
        .zip(first..)
        .map(|(e, seq)| Event {
            thread_id: thread,
            seq,
            run_id: e.run_id,
            kind: e.kind,
            data: e.data,
            created_at,
        })
        .collect()
}
