//! The decision core (SPEC section 4): one pure function from everything
//! known about a delivery to the one thing the worker does next. The worker
//! gathers facts and executes the answer; it never decides on its own, so the
//! whole delivery policy is this file and its table test.

use crate::runtime::message::Authentication;

/// What the ledger said when the worker tried to claim the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerState {
    /// This worker owns the key now.
    Claimed,
    AlreadySucceeded,
    /// Dead-lettered before; this delivery is not a replay.
    AlreadyDeadLettered,
    /// Another worker holds a live lease.
    HeldByAnother,
    /// The key belongs to a different job.
    KeyConflict,
    /// The ledger database could not be reached.
    Unavailable,
}

/// How the handler ended (after in-process retries of transient errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Succeeded; `recorded` says whether the ledger now says so.
    Succeeded {
        recorded: bool,
    },
    PermanentFailure,
    TransientFailure,
    /// Stopped before finishing: shutdown, or the ledger lease was lost.
    Interrupted,
}

/// Everything known about one delivery at one moment. Later facts are `None`
/// until the worker has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    pub authentication: Authentication,
    /// `false` when the message could not be parsed or validated.
    pub message_valid: bool,
    pub ledger: Option<LedgerState>,
    pub outcome: Option<HandlerOutcome>,
    /// Pub/Sub's count (1 = first delivery); `None` without a dead-letter policy.
    pub delivery_attempt: Option<u32>,
    /// The subscription's dead-letter policy limit, when it has one.
    pub max_delivery_attempts: Option<u32>,
    /// SIGTERM received: start nothing new.
    pub shutting_down: bool,
}

/// Why a message is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckReason {
    Succeeded,
    Duplicate,
    AlreadyDeadLettered,
    /// Bad or missing secret: dropped, never replayable.
    Forged,
}

/// Why a message is handed back for redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    TransientFailure,
    LedgerUnavailable,
    /// Ran but the ledger could not record the success.
    SuccessNotRecorded,
    ShuttingDown,
    /// The handler was stopped (shutdown or lost lease) before it finished.
    Interrupted,
}

/// Why a message goes to the dead-letter topic (its `error_kind` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    InvalidMessage,
    Permanent,
    KeyConflict,
    /// Transient failures on the last delivery the subscription allows.
    RetriesExhausted,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::InvalidMessage => "invalid-message",
            DeadLetterKind::Permanent => "permanent",
            DeadLetterKind::KeyConflict => "key-conflict",
            DeadLetterKind::RetriesExhausted => "retries-exhausted",
        }
    }
}

/// The worker's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the ledger for the key.
    Claim,
    /// Run the handler (the key is ours).
    Run,
    Ack(AckReason),
    Nack(NackReason),
    /// Publish the original data and attributes plus `error`/`error_kind` to
    /// the dead-letter topic, then ack; nack if that publish fails.
    DeadLetter(DeadLetterKind),
    /// Keep the message leased (extend its deadline) and ask the ledger again later.
    Hold,
}

/// Whether this delivery is the last one the subscription will make.
fn is_last_delivery(situation: &Situation) -> bool {
    match (situation.delivery_attempt, situation.max_delivery_attempts) {
        (Some(attempt), Some(max)) => attempt >= max,
        _ => false,
    }
}

/// The delivery policy. See the module docs and the table test.
pub fn decide(situation: &Situation) -> Action {
    // Authentication first: a forged message is dropped whatever it contains,
    // and never dead-lettered (it must not become replayable).
    if situation.authentication != Authentication::Valid {
        return Action::Ack(AckReason::Forged);
    }
    if !situation.message_valid {
        return Action::DeadLetter(DeadLetterKind::InvalidMessage);
    }
    let Some(ledger) = situation.ledger else {
        return if situation.shutting_down {
            Action::Nack(NackReason::ShuttingDown)
        } else {
            Action::Claim
        };
    };
    match ledger {
        LedgerState::AlreadySucceeded => return Action::Ack(AckReason::Duplicate),
        LedgerState::AlreadyDeadLettered => return Action::Ack(AckReason::AlreadyDeadLettered),
        LedgerState::KeyConflict => return Action::DeadLetter(DeadLetterKind::KeyConflict),
        LedgerState::Unavailable if is_last_delivery(situation) => {
            return Action::DeadLetter(DeadLetterKind::RetriesExhausted)
        }
        LedgerState::Unavailable => return Action::Nack(NackReason::LedgerUnavailable),
        LedgerState::HeldByAnother if situation.shutting_down => return Action::Nack(NackReason::ShuttingDown),
        LedgerState::HeldByAnother => return Action::Hold,
        LedgerState::Claimed => {}
    }
    let Some(outcome) = situation.outcome else {
        return if situation.shutting_down {
            Action::Nack(NackReason::ShuttingDown)
        } else {
            Action::Run
        };
    };
    match outcome {
        HandlerOutcome::Succeeded { recorded: true } => Action::Ack(AckReason::Succeeded),
        HandlerOutcome::Succeeded { recorded: false } => Action::Nack(NackReason::SuccessNotRecorded),
        HandlerOutcome::PermanentFailure => Action::DeadLetter(DeadLetterKind::Permanent),
        HandlerOutcome::TransientFailure if is_last_delivery(situation) => {
            Action::DeadLetter(DeadLetterKind::RetriesExhausted)
        }
        HandlerOutcome::TransientFailure => Action::Nack(NackReason::TransientFailure),
        HandlerOutcome::Interrupted => Action::Nack(NackReason::Interrupted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Authentication::{Invalid, Missing, Valid};
    use HandlerOutcome::*;
    use LedgerState::*;

    fn situation(
        authentication: Authentication,
        message_valid: bool,
        ledger: Option<LedgerState>,
        outcome: Option<HandlerOutcome>,
        delivery: (Option<u32>, Option<u32>),
        shutting_down: bool,
    ) -> Situation {
        Situation {
            authentication,
            message_valid,
            ledger,
            outcome,
            delivery_attempt: delivery.0,
            max_delivery_attempts: delivery.1,
            shutting_down,
        }
    }

    #[test]
    fn the_delivery_table() {
        let first = (Some(1), Some(5));
        let last = (Some(5), Some(5));
        let no_policy = (None, None);
        #[rustfmt::skip]
        let table: &[(&str, Situation, Action)] = &[
            // Authentication beats everything, even an invalid message or shutdown.
            ("missing secret", situation(Missing, true, None, None, first, false), Ack(AckReason::Forged)),
            ("wrong secret", situation(Invalid, true, None, None, first, false), Ack(AckReason::Forged)),
            ("wrong secret, garbage", situation(Invalid, false, None, None, first, false), Ack(AckReason::Forged)),
            ("wrong secret, shutting down", situation(Invalid, true, None, None, first, true), Ack(AckReason::Forged)),
            // Poison messages go to the DLQ on the first delivery.
            ("invalid message", situation(Valid, false, None, None, first, false), DeadLetter(DeadLetterKind::InvalidMessage)),
            ("invalid message, no DLQ policy", situation(Valid, false, None, None, no_policy, false), DeadLetter(DeadLetterKind::InvalidMessage)),
            // Valid message: consult the ledger, unless shutting down.
            ("valid, not claimed yet", situation(Valid, true, None, None, first, false), Claim),
            ("valid, shutting down before claim", situation(Valid, true, None, None, first, true), Nack(NackReason::ShuttingDown)),
            ("duplicate", situation(Valid, true, Some(AlreadySucceeded), None, first, false), Ack(AckReason::Duplicate)),
            ("duplicate while shutting down", situation(Valid, true, Some(AlreadySucceeded), None, first, true), Ack(AckReason::Duplicate)),
            ("redelivered after dead-lettering", situation(Valid, true, Some(AlreadyDeadLettered), None, first, false), Ack(AckReason::AlreadyDeadLettered)),
            ("key used by another job", situation(Valid, true, Some(KeyConflict), None, first, false), DeadLetter(DeadLetterKind::KeyConflict)),
            ("ledger down", situation(Valid, true, Some(Unavailable), None, first, false), Nack(NackReason::LedgerUnavailable)),
            ("ledger down, no DLQ policy", situation(Valid, true, Some(Unavailable), None, no_policy, false), Nack(NackReason::LedgerUnavailable)),
            ("ledger down on last delivery", situation(Valid, true, Some(Unavailable), None, last, false), DeadLetter(DeadLetterKind::RetriesExhausted)),
            ("held by another worker", situation(Valid, true, Some(HeldByAnother), None, first, false), Hold),
            ("held by another, last delivery", situation(Valid, true, Some(HeldByAnother), None, last, false), Hold),
            ("held by another, shutting down", situation(Valid, true, Some(HeldByAnother), None, first, true), Nack(NackReason::ShuttingDown)),
            ("claimed", situation(Valid, true, Some(Claimed), None, first, false), Run),
            ("claimed, then shutdown began", situation(Valid, true, Some(Claimed), None, first, true), Nack(NackReason::ShuttingDown)),
            // After the handler.
            ("succeeded", situation(Valid, true, Some(Claimed), Some(Succeeded { recorded: true }), first, false), Ack(AckReason::Succeeded)),
            ("succeeded during shutdown", situation(Valid, true, Some(Claimed), Some(Succeeded { recorded: true }), first, true), Ack(AckReason::Succeeded)),
            ("succeeded, ledger write failed", situation(Valid, true, Some(Claimed), Some(Succeeded { recorded: false }), first, false), Nack(NackReason::SuccessNotRecorded)),
            ("permanent failure", situation(Valid, true, Some(Claimed), Some(PermanentFailure), first, false), DeadLetter(DeadLetterKind::Permanent)),
            ("permanent failure, no DLQ policy", situation(Valid, true, Some(Claimed), Some(PermanentFailure), no_policy, false), DeadLetter(DeadLetterKind::Permanent)),
            ("transient failure", situation(Valid, true, Some(Claimed), Some(TransientFailure), first, false), Nack(NackReason::TransientFailure)),
            ("transient failure, 4 of 5", situation(Valid, true, Some(Claimed), Some(TransientFailure), (Some(4), Some(5)), false), Nack(NackReason::TransientFailure)),
            ("transient failure, last delivery", situation(Valid, true, Some(Claimed), Some(TransientFailure), last, false), DeadLetter(DeadLetterKind::RetriesExhausted)),
            ("transient failure, past the limit", situation(Valid, true, Some(Claimed), Some(TransientFailure), (Some(7), Some(5)), false), DeadLetter(DeadLetterKind::RetriesExhausted)),
            ("transient failure, no DLQ policy", situation(Valid, true, Some(Claimed), Some(TransientFailure), no_policy, false), Nack(NackReason::TransientFailure)),
            ("interrupted by shutdown", situation(Valid, true, Some(Claimed), Some(Interrupted), first, true), Nack(NackReason::Interrupted)),
            ("interrupted, lease lost", situation(Valid, true, Some(Claimed), Some(Interrupted), last, false), Nack(NackReason::Interrupted)),
        ];
        for (name, situation, expected) in table {
            assert_eq!(decide(situation), *expected, "{name}");
        }
    }
}
