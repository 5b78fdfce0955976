//! The run use cases every transport calls: start a run, cancel one.

use domain::{CancelAction, RunSpec};
use ids::UserId;
use store::{IfNotExists, MultitaskStrategy, NewRun, Run, RunStatus};

use crate::metrics::{self, LookupFailure};
use crate::{Engine, step};

/// A run request a transport has validated: the run to create, and how.
#[derive(Clone, Debug)]
pub struct RunStart {
    /// The run; its `kwargs` are `spec`'s (`RunSpec::to_kwargs`).
    pub new_run: NewRun,
    pub spec: RunSpec,
    pub if_not_exists: IfNotExists,
    /// A run on a new temporary thread (`/runs...`).
    pub stateless: bool,
}

impl Engine {
    /// Creates the run and tells the executor (and, for `interrupt`/`rollback`, the runs it
    /// replaces). With a free place on this node the run is claimed as it is created and
    /// starts at once (if its thread has no run before it), its first step (the input
    /// applied) committed with it in the same transaction; otherwise the executor claims it
    /// in turn. Call it from a task of its own: a run committed claimed must reach the
    /// executor even if the caller goes away meanwhile.
    pub async fn start_run(&self, owner: UserId, start: &RunStart) -> store::Result<Run> {
        let new_run = &start.new_run;
        let thread = new_run.thread_id;
        // Whether this creates the thread (for the metrics): a stateless run's always; with
        // `if_not_exists=create`, when the caller has no such thread yet (asked on that path
        // only).
        let new_thread = match start.if_not_exists {
            IfNotExists::Create if start.stateless => true,
            IfNotExists::Create => matches!(
                self.store.get_thread(owner, thread).await,
                Err(store::Error::NotFound { .. })
            ),
            IfNotExists::Reject => false,
        };
        let reservation = self.executor.try_reserve(new_run.run_id, thread, owner);
        // A `command` resumes the thread's state: the executor reads it first (no first step).
        // A user's graph applies its input itself, on its worker (even under a built-in's name).
        let resumes = start.spec.command.is_some();
        let graph = self.graph(&start.spec.graph_id).is_some();
        let first = reservation.as_ref().filter(|_| !resumes && !graph).and_then(|_| {
            step::first_step(
                new_run.run_id,
                new_run.assistant_id,
                &start.spec,
                new_run.input.as_ref(),
            )
            .ok()
        });
        let created = match first {
            Some(first) => {
                self.log.create_run_claiming(owner, new_run, start.if_not_exists, first).await
            }
            None => self
                .store
                .create_run_replacing(owner, new_run, start.if_not_exists)
                .await
                .map(|(run, replaced)| (run, replaced, None)),
        };
        let (run, replaced, step) = match created {
            Ok(created) => created,
            Err(e) => {
                self.count_thread_failure(owner, start, &e).await;
                return Err(e);
            }
        };
        // A claimed run goes to the executor first thing (its first step's events are
        // published already, before anything it emits).
        match reservation {
            Some(reservation) if run.status == RunStatus::Running => {
                let started = step.and_then(|step| step.checkpoint.map(|c| c.values));
                self.executor.spawn_claimed(run.clone(), reservation, started);
            }
            _ => self.executor.wake(),
        }
        if new_thread {
            metrics::thread_created();
        }
        metrics::run_created();
        let action = match run.multitask_strategy {
            MultitaskStrategy::Interrupt => Some(CancelAction::Interrupt),
            MultitaskStrategy::Rollback => Some(CancelAction::Rollback),
            _ => None,
        };
        if let Some(action) = action {
            self.executor.cancel_thread(run.thread_id, run.run_id, action);
            for old in replaced {
                if let Err(e) =
                    self.executor.announce_cancelled(owner, run.thread_id, old, action).await
                {
                    tracing::warn!(error = %e, run_id = %old, "could not announce a replaced run's end");
                }
            }
        }
        Ok(run)
    }

    /// Counts a run refused because its thread is missing or another user's (the caller's
    /// answer is unchanged: 404, or 409 for `if_not_exists=create` on another user's id).
    async fn count_thread_failure(&self, owner: UserId, start: &RunStart, e: &store::Error) {
        let thread = start.new_run.thread_id;
        match e {
            store::Error::NotFound { .. } => self.thread_not_found(owner, thread).await,
            store::Error::Conflict(_) if start.if_not_exists == IfNotExists::Create => {
                if let Ok(Some(holder)) = self.store.admin_thread_owner(thread).await
                    && holder != owner
                {
                    metrics::thread_lookup_failed(LookupFailure::NotOwner);
                    tracing::info!(reason = "not_owner", "thread id taken by another user");
                }
            }
            _ => {}
        }
    }

    /// Cancels a run of `owner`'s: a pending run ends at once (`interrupted`, or deleted for
    /// a rollback) with a `run_cancelled` event; a running one is asked to stop.
    pub async fn cancel_run(
        &self,
        owner: UserId,
        run: &Run,
        action: CancelAction,
    ) -> store::Result<()> {
        self.executor.cancel_run(owner, run, action).await
    }
}
