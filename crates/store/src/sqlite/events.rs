//! SQLite: a thread's events (append, read after a seq).

use ids::{RunId, ThreadId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::json;
use crate::model::*;
use crate::{Error, Result};

use super::{SqliteStore, micros, parsed, time, unreadable};

impl SqliteStore {
    pub async fn append_events(
        &self,
        owner: UserId,
        thread: ThreadId,
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        let events = encode_events(events)?;
        self.write(move |c| append_in(c, owner, thread, events)).await
    }

    pub async fn events_after(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.read(move |c| {
            // One statement, one snapshot: the owner check and the rows agree.
            let mut stmt = c.prepare_cached(
                "select t.owner_id, e.seq, e.run_id, e.kind, e.data, e.created_at
                 from threads t left join events e on e.thread_id = t.thread_id and e.seq > ?2
                      and (?5 is null or e.run_id = ?5)
                 where t.thread_id = ?1 and t.owner_id = ?3
                 order by e.seq limit ?4",
            )?;
            let mut rows = stmt.query(params![thread, after, owner, limit, run])?;
            let mut out = Vec::new();
            let mut owned = false;
            while let Some(r) = rows.next()? {
                owned = true;
                let Some(seq) = r.get::<_, Option<i64>>(1)? else { continue };
                out.push(Event {
                    thread_id: thread,
                    seq,
                    run_id: r.get(2)?,
                    kind: parsed(r, 3)?,
                    data: super::json(r, 4)
                        .map_err(|e| unreadable("event", format_args!("{thread} seq {seq}"), e))?,
                    created_at: time(r, 5)?,
                });
            }
            if !owned {
                return Err(Error::not_found("thread", thread));
            }
            Ok(out)
        })
        .await
    }
}

/// Events with their data serialized, ready for a write job.
pub(super) fn encode_events(events: &[NewEvent]) -> Result<Vec<(NewEvent, String)>> {
    events.iter().map(|e| Ok((e.clone(), json::encode("event data", &e.data, true)?))).collect()
}

/// Appends events, numbering them from the thread's `last_seq` (in the caller's transaction).
pub(super) fn append_in(
    c: &Connection,
    owner: UserId,
    thread: ThreadId,
    events: Vec<(NewEvent, String)>,
) -> Result<Vec<Event>> {
    let n = events.len() as i64;
    let created_at = now();
    let last: i64 = c
        .prepare_cached("update threads set last_seq = last_seq + ?1 where thread_id = ?2 and owner_id = ?3 returning last_seq")?
        .query_row(params![n, thread, owner], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::not_found("thread", thread))?;
    let mut insert =
        c.prepare_cached("insert into events (thread_id, seq, run_id, kind, data, created_at) values (?1, ?2, ?3, ?4, ?5, ?6)")?;
    let mut out = Vec::with_capacity(events.len());
    for (seq, (event, data)) in (last - n + 1..).zip(events) {
        insert.execute(params![
            thread,
            seq,
            event.run_id,
            event.kind.as_str(),
            data,
            micros(created_at)
        ])?;
        out.push(Event {
            thread_id: thread,
            seq,
            run_id: event.run_id,
            kind: event.kind,
            data: event.data,
            created_at,
        });
    }
    Ok(out)
}
