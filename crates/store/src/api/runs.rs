//! `Store`: runs (create, claim, cancel, delete, roll back, recover, read, move).

use ids::{RunId, ThreadId, UserId};

use crate::model::*;
use crate::{Result, Store};

impl Store {
    // ---- runs ----

    /// Creates a run in the caller's thread, checking ownership in the same transaction;
    /// with [`IfNotExists::Create`] a missing thread is created in that transaction too. The
    /// thread becomes `busy`. If the thread already has an active run, the run's
    /// `multitask_strategy` decides in the same transaction: `reject` is a
    /// [`Error::Conflict`] ([`THREAD_BUSY`]); `enqueue` queues behind it; `interrupt` ends
    /// pending runs `interrupted`; `rollback` deletes pending runs. A *running* run is left to
    /// the executor to stop (it is told after this returns).
    ///
    /// [`Error::Conflict`]: crate::Error::Conflict
    pub async fn create_run(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
    ) -> Result<Run> {
        Ok(self.create_run_replacing(owner, run, if_not_exists).await?.0)
    }

    /// [`Store::create_run`], also saying which pending runs its `interrupt` or `rollback`
    /// strategy ended (interrupted) or deleted, so their end can be announced.
    pub async fn create_run_replacing(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
    ) -> Result<(Run, Vec<RunId>)> {
        dispatch!(self.create_run(owner, run, if_not_exists))
    }

    /// [`Store::create_run_replacing`] for a caller ready to execute the run now: when the
    /// thread has no active run, the run is created `running` (claimed in the same
    /// transaction, saving the claim's own) with its `first` step committed, and the caller
    /// must publish the step's events and execute the run from there. Otherwise it is created
    /// `pending`, to be claimed in turn (and no step is returned). If the first step's update
    /// is refused (an invalid update, before anything is written), the run is still created
    /// claimed but without the step: executing it meets the same refusal and ends the run.
    pub async fn create_run_claiming(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
        first: FirstStep,
    ) -> Result<(Run, Vec<RunId>, Option<Step>)> {
        dispatch!(self.create_run_claiming(owner, run, if_not_exists, first))
    }

    pub async fn get_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<Run> {
        dispatch!(self.get_run(owner, thread, id))
    }

    /// The thread's runs, newest first, optionally only those in `status`.
    pub async fn list_runs(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        offset: u32,
        status: Option<RunStatus>,
    ) -> Result<Vec<Run>> {
        dispatch!(self.list_runs(owner, thread, limit, offset, status))
    }

    /// Claims up to `limit` runs to execute, marking them `running`: each the oldest pending
    /// run of a thread that has no running run, oldest first, with no limit per user.
    pub async fn claim_runs(&self, limit: u32) -> Result<Vec<Run>> {
        self.claim_runs_fairly(limit, u32::MAX).await
    }

    /// Claims up to `limit` runs to execute, marking them `running`: each the oldest pending
    /// run of a thread that has no running run, taken in turns between users (each user's
    /// oldest first), and no more than a user's `per_user` running runs in all. Safe with many
    /// claimers (a run is claimed only while still `pending`).
    pub async fn claim_runs_fairly(&self, limit: u32, per_user: u32) -> Result<Vec<Run>> {
        let mut runs = dispatch!(self.claim_runs(limit, per_user))?;
        // `returning` has no order: give them back oldest first.
        runs.sort_by_key(|r| (r.created_at, r.run_id));
        Ok(runs)
    }

    /// Whether any run waits to be claimed (on any node), so an executor with nothing to claim
    /// need not try again at every run's end.
    pub async fn any_pending_runs(&self) -> Result<bool> {
        dispatch!(self.any_pending_runs())
    }

    /// Cancels a run that has not started: ends it `interrupted` or, with `rollback`, deletes
    /// it. False if the run is not pending (it is running, or ended): then the executor
    /// running it must stop it.
    pub async fn cancel_pending_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        rollback: bool,
    ) -> Result<bool> {
        dispatch!(self.cancel_pending_run(owner, thread, id, rollback))
    }

    /// Deletes a finished run (its events go with it). An active run is a conflict.
    pub async fn delete_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        dispatch!(self.delete_run(owner, thread, id))
    }

    /// Undoes a run: deletes it with its checkpoints and events, and sets the thread's values
    /// back to its newest remaining checkpoint.
    pub async fn rollback_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        dispatch!(self.rollback_run(owner, thread, id))
    }

    /// At start-up: runs left `running` by a crash end `error` ("server restarted") and their
    /// threads' statuses are set again; a stateless run's temporary thread (`on_completion:
    /// delete` in its kwargs) is deleted, as at the run's end. Returns the runs it ended that
    /// can be read (one that cannot is ended all the same, and logged).
    pub async fn recover_runs(&self) -> Result<Vec<Run>> {
        dispatch!(self.recover_runs())
    }

    /// Moves a run to `status`. When it leaves the active states the thread's status follows
    /// (`idle`, `error` or `interrupted`) unless another run of the thread is still active.
    pub async fn set_run_status(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<Run> {
        dispatch!(self.set_run_status(owner, thread, id, status, error))
    }
}
