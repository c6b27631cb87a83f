//! What happens when one of the agent's duties fails (docs/agent.md, "When a duty fails"):
//! a task or round that panicked is logged, never silently gone, and then either started
//! again by its owner or, for the loop's own state, the agent stops (the DaemonSet starts it
//! again, and the records bring back what it held). Tokio drops a panicked task's panic
//! with the task unless its JoinHandle or JoinSet is read: these read them.

use std::any::Any;

use tokio::task::JoinError;

/// What a panic said (its `&str` or `String` payload).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Logs how a task of `what` ended when it panicked, with what is done about it (`then`),
/// and returns the line; a task that returned or was cancelled (aborted with its owner) is
/// no failure.
pub fn ended(what: &str, result: Result<(), JoinError>, then: &str) -> Option<String> {
    let panic = result.err().filter(JoinError::is_panic)?.into_panic();
    let line = format!(
        "agent: {what} panicked ({}); {then}",
        panic_message(&*panic)
    );
    log::error!("{line}");
    Some(line)
}

/// One round of a duty that keeps no state between rounds (leak collection, the policy's
/// mirror): a panic is logged and the round counts as not done; the next one runs as usual.
pub fn round<T>(what: &str, job: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        Ok(done) => Some(done),
        Err(panic) => {
            log::error!(
                "agent: a round of {what} panicked ({}); the next round runs as usual",
                panic_message(&*panic)
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_task_is_said_with_its_message_and_a_cancelled_one_is_not() {
        let runtime = crate::sys::runtime::build().unwrap();
        runtime.block_on(async {
            let panicked = tokio::spawn(async { panic!("test fault: a relay") }).await;
            assert_eq!(
                ended("a relay", panicked, "re-opened").as_deref(),
                Some("agent: a relay panicked (test fault: a relay); re-opened")
            );
            let cancelled = tokio::spawn(std::future::pending::<()>());
            cancelled.abort();
            assert_eq!(ended("a relay", cancelled.await, "re-opened"), None);
            assert_eq!(ended("a relay", tokio::spawn(async {}).await, ""), None);
        });
    }

    #[test]
    fn a_round_that_panics_is_none_and_the_next_one_runs() {
        let n = 7;
        assert_eq!(
            round("leak collection", || panic!("test fault {n}")),
            None::<()>
        );
        assert_eq!(round("leak collection", || n), Some(7));
    }
}
