//! The shadow worker in-process: a full queue drops and counts, never
//! waits; disagreements are counted and kept for the console's summary.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis::engine::{Decision, DenyStatus, Reason};
use portcullis::shadow::{Asked, Question, Shadow};

use crate::support::{copy_policies, eventually, load};

fn deny() -> Decision {
    Decision::deny(DenyStatus::Forbidden, Reason::NoGrant)
}

/// A question the candidate answers with `answer`, after `gate` opens
/// (signalling `started` first).
fn question(
    answer: Decision,
    started: Option<mpsc::Sender<()>>,
    gate: Option<mpsc::Receiver<()>>,
) -> Question {
    Box::new(move |_, _, _| {
        if let Some(started) = started {
            let _ = started.send(());
        }
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
        Asked {
            decision: answer,
            request_id: "r".into(),
        }
    })
}

#[test]
fn a_full_shadow_queue_drops_and_counts_and_disagreements_are_summarized() {
    let dir = copy_policies(|_, text| text);
    let handle = Arc::new(ArcSwap::from_pointee(load(dir.path())));
    let shadow = Shadow::new();
    shadow.start(handle, 1).unwrap();
    let mut served = deny();
    served.application = Some("documents".into());
    let served = Arc::new(served);

    // The worker takes the first check and waits on it; the second fills
    // the queue of one; the third is dropped at once.
    let (started_tx, started) = mpsc::channel();
    let (open, gate) = mpsc::channel();
    shadow.offer(
        question(deny(), Some(started_tx), Some(gate)),
        served.clone(),
        1,
    );
    started.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut allow = deny();
    allow.effect = portcullis::engine::Effect::Allow;
    allow.reason = Reason::Granted;
    shadow.offer(question(allow.clone(), None, None), served.clone(), 1);
    shadow.offer(question(allow, None, None), served.clone(), 1);
    assert_eq!(shadow.summary().dropped, 1);
    open.send(()).unwrap();
    eventually(Duration::from_secs(5), "both queued checks decided", || {
        shadow.decided() == 2
    });

    let summary = shadow.summary();
    assert_eq!(summary.dropped, 1);
    assert_eq!(summary.disagreements.len(), 1, "{summary:?}");
    let counted = &summary.disagreements[0];
    assert_eq!(
        (
            counted.application.as_str(),
            counted.from,
            counted.to,
            counted.count
        ),
        ("documents", "deny", "allow", 1)
    );
    assert_eq!(summary.recent.len(), 1);
    assert_eq!(summary.recent[0].candidate_reason, "granted");
    assert_eq!(summary.recent[0].request_id, "r");
    assert!(!summary.version.is_empty());
}
