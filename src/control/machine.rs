//! The phase transition rules of DESIGN §3.2 in one place: which moves exist, and what each
//! needs before it may happen. Pure: the facts come in as values, the answer is a [`Step`] (what
//! to do and which gates to wait for) or a [`Refusal`] saying why not. The admin socket, the
//! config reload and the jobs all ask here.

use crate::migration::Phase;

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `phase NAME PHASE [force]`: one step forward or back. `force` skips the verify gates
    /// (never the acknowledgments: those guard against instances that disagree).
    Phase { to: Phase, force: bool },
    /// `rollback NAME`: one step back.
    Rollback,
}

/// What is known about a migration besides its phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// A backfill finished, and a verify that started after it found both sides equal.
    pub verified: bool,
    /// Contract → switch: a reverse backfill (old = down(new)) finished, and a verify that
    /// started after it found both sides equal.
    pub reverse_verified: bool,
}

/// An allowed move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub from: Phase,
    pub to: Phase,
    /// Every live instance must first have acknowledged the epoch at which `from` was entered
    /// (no session still runs a transaction from before it).
    pub needs_acks: bool,
    /// `complete_sql` runs before the move is recorded.
    pub runs_complete_sql: bool,
    /// The verify gate was skipped by `force`.
    pub forced: bool,
}

impl Step {
    /// Nothing to do: the migration is already there.
    pub fn is_noop(&self) -> bool {
        self.from == self.to
    }
}

/// Why a move is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Decides `request` for a migration in phase `from`.
pub fn decide(from: Phase, request: Request, facts: Facts) -> Result<Step, Refusal> {
    let (to, force) = match request {
        Request::Phase { to, force } => (to, force),
        Request::Rollback => match previous(from) {
            Some(to) => (to, false),
            None if from == Phase::Complete => {
                return Err(refusal(
                    "complete is final; there is nothing to roll back to",
                ));
            }
            None => return Err(refusal("planned is the first phase; nothing to roll back")),
        },
    };
    let step = |needs_acks, runs_complete_sql, forced| {
        Ok(Step {
            from,
            to,
            needs_acks,
            runs_complete_sql,
            forced,
        })
    };
    use Phase::*;
    match (from, to) {
        _ if from == to => step(false, false, false),
        (Complete, _) => Err(refusal(
            "complete is final; the migration cannot change phase",
        )),
        // Dual-writing starts; the snapshot build checks the new side and the expressions.
        (Planned, Expand) => step(false, false, false),
        // Stops dual-writing: the new side is abandoned, the old one never stopped being right.
        (Expand, Planned) => step(false, false, false),
        (Expand, Switch) if facts.verified => step(false, false, false),
        (Expand, Switch) if force => step(false, false, true),
        (Expand, Switch) => Err(refusal(
            "expand → switch needs a finished backfill and a clean verify run after it \
             (`backfill NAME start`, then `verify NAME`), or `force`",
        )),
        // The old side is still written in switch, so it is in sync: reads can move back now.
        (Switch, Expand) => step(false, false, false),
        // Old-side writes stop: no instance may still run a transaction that reads the old side.
        (Switch, Contract) => step(true, false, false),
        // The old side was not written in contract; it must be rebuilt from the new one first.
        (Contract, Switch) if facts.reverse_verified => step(false, false, false),
        (Contract, Switch) if force => step(false, false, true),
        (Contract, Switch) => Err(refusal(
            "contract → switch needs a reverse backfill (old = down(new)) and a clean verify \
             after it, or `force`",
        )),
        (Contract, Complete) => step(true, true, false),
        _ => Err(refusal(skip_message(from, to))),
    }
}

/// The phase one step back, if any.
fn previous(phase: Phase) -> Option<Phase> {
    match phase {
        Phase::Planned | Phase::Complete => None,
        Phase::Expand => Some(Phase::Planned),
        Phase::Switch => Some(Phase::Expand),
        Phase::Contract => Some(Phase::Switch),
    }
}

/// The phase one step forward, if any.
pub fn next(phase: Phase) -> Option<Phase> {
    match phase {
        Phase::Planned => Some(Phase::Expand),
        Phase::Expand => Some(Phase::Switch),
        Phase::Switch => Some(Phase::Contract),
        Phase::Contract => Some(Phase::Complete),
        Phase::Complete => None,
    }
}

fn skip_message(from: Phase, to: Phase) -> String {
    if to > from {
        let via = next(from).expect("a phase after `from` exists");
        format!(
            "{} → {} skips a phase; go one step at a time ({} next)",
            from.name(),
            to.name(),
            via.name()
        )
    } else {
        format!(
            "{} → {} goes back more than one phase; roll back one step at a time",
            from.name(),
            to.name()
        )
    }
}

fn refusal(message: impl Into<String>) -> Refusal {
    Refusal(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    const ALL: [Phase; 5] = [Planned, Expand, Switch, Contract, Complete];

    fn phase(to: Phase) -> Request {
        Request::Phase { to, force: false }
    }

    fn forced(to: Phase) -> Request {
        Request::Phase { to, force: true }
    }

    const NONE: Facts = Facts {
        verified: false,
        reverse_verified: false,
    };
    const VERIFIED: Facts = Facts {
        verified: true,
        reverse_verified: true,
    };

    /// Every (from, to) pair without facts or force: exactly these are allowed.
    #[test]
    fn the_allowed_edges_without_facts() {
        let allowed = [
            (Planned, Expand),
            (Expand, Planned),
            (Switch, Expand),
            (Switch, Contract),
            (Contract, Complete),
        ];
        for from in ALL {
            for to in ALL {
                let result = decide(from, phase(to), NONE);
                let expected = from == to || allowed.contains(&(from, to));
                assert_eq!(result.is_ok(), expected, "{from:?} → {to:?}: {result:?}");
            }
        }
    }

    #[test]
    fn verified_facts_open_the_switch_edges_and_nothing_else() {
        for from in ALL {
            for to in ALL {
                let without = decide(from, phase(to), NONE).is_ok();
                let with = decide(from, phase(to), VERIFIED).is_ok();
                let opened = matches!((from, to), (Expand, Switch) | (Contract, Switch));
                assert_eq!(with, without || opened, "{from:?} → {to:?}");
            }
        }
    }

    #[test]
    fn force_skips_the_verify_gates_only() {
        for from in ALL {
            for to in ALL {
                let result = decide(from, forced(to), NONE);
                let gated = matches!((from, to), (Expand, Switch) | (Contract, Switch));
                let plain = decide(from, phase(to), NONE);
                if gated {
                    let step = result.unwrap();
                    assert!(step.forced && !step.needs_acks, "{from:?} → {to:?}");
                } else {
                    assert_eq!(result.is_ok(), plain.is_ok(), "{from:?} → {to:?}");
                    if let Ok(step) = result {
                        assert!(!step.forced);
                    }
                }
            }
        }
    }

    #[test]
    fn leaving_switch_forward_and_completing_wait_for_acknowledgments() {
        let contract = decide(Switch, phase(Contract), NONE).unwrap();
        assert!(contract.needs_acks && !contract.runs_complete_sql);
        let complete = decide(Contract, phase(Complete), NONE).unwrap();
        assert!(complete.needs_acks && complete.runs_complete_sql);
        for (from, to) in [(Planned, Expand), (Expand, Planned), (Switch, Expand)] {
            assert!(!decide(from, phase(to), NONE).unwrap().needs_acks);
        }
        // force does not skip acknowledgments.
        assert!(decide(Switch, forced(Contract), NONE).unwrap().needs_acks);
    }

    #[test]
    fn rollback_goes_one_step_back_through_the_same_gates() {
        assert_eq!(decide(Expand, Request::Rollback, NONE).unwrap().to, Planned);
        assert_eq!(decide(Switch, Request::Rollback, NONE).unwrap().to, Expand);
        let refused = decide(Contract, Request::Rollback, NONE).unwrap_err();
        assert!(refused.0.contains("reverse backfill"), "{refused}");
        let step = decide(Contract, Request::Rollback, VERIFIED).unwrap();
        assert_eq!((step.from, step.to), (Contract, Switch));
        assert!(
            decide(Planned, Request::Rollback, VERIFIED)
                .unwrap_err()
                .0
                .contains("first phase")
        );
        assert!(
            decide(Complete, Request::Rollback, VERIFIED)
                .unwrap_err()
                .0
                .contains("final")
        );
    }

    #[test]
    fn the_same_phase_is_a_noop() {
        for p in ALL {
            let step = decide(p, phase(p), NONE).unwrap();
            assert!(step.is_noop() && !step.needs_acks && !step.runs_complete_sql);
        }
    }

    #[test]
    fn refusals_say_what_to_do_instead() {
        let skip = decide(Expand, phase(Contract), VERIFIED).unwrap_err();
        assert_eq!(
            skip.0,
            "expand → contract skips a phase; go one step at a time (switch next)"
        );
        let back = decide(Contract, phase(Expand), VERIFIED).unwrap_err();
        assert!(back.0.contains("one step at a time"), "{back}");
        let verify = decide(Expand, phase(Switch), NONE).unwrap_err();
        assert!(verify.0.contains("clean verify"), "{verify}");
        let done = decide(Complete, phase(Contract), VERIFIED).unwrap_err();
        assert!(done.0.contains("final"), "{done}");
    }

    #[test]
    fn next_walks_the_phases_in_order() {
        let mut p = Planned;
        let mut seen = vec![p];
        while let Some(n) = next(p) {
            seen.push(n);
            p = n;
        }
        assert_eq!(seen, ALL);
    }
}
