"""Whether a candidate version may become active without an operator's say.

A candidate is judged on the operator's fixed gate set (``NER_GATE_DATA``), never on data the
caller chose: the candidate and the active version are both scored on it, through the engine, by
the same scorer. The scorer is a seam (``GateSet.score``) the trainer passes in, since the registry
imports no torch. Auto-promotion needs the candidate at least as good overall and no entity type
worse by more than ``type_margin``; a run from its own base model, a registry without a gate set, or
an empty registry (unless the operator's bootstrap run or NER_GATE_PROMOTE_FIRST=true) leaves the
candidate for an admin to activate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from shared.core.tables import ModelVersion, TrainingRun
from shared.registry.errors import RegistryError
from shared.registry.service import get_active

log = logging.getLogger(__name__)

PROMOTED = "promoted"  # activated by the gate
REJECTED = "rejected"  # scored worse than the active version on the gate set
HELD = "held"  # not judged automatically: an admin activates it (or not)

# Scores of the same model on the same data are bit-identical on one machine, but a model scored
# on another device may differ in the last digits: a tie stays a tie.
_EPSILON = 1e-9

Report = dict[str, Any]


@dataclass(frozen=True)
class GateSet:
    """The operator's gate data and how one model folder scores on it (the trainer's engine scorer)."""

    ref: str  # the operator's reference, for logs
    gate_hash: str  # content and method: scores with the same hash are comparable (the cache key)
    sentences: int
    score: Callable[[str], Report]  # model folder -> {precision, recall, f1, per_type: {T: {f1, ...}}}


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one candidate, and the scores it rests on."""

    decision: str  # PROMOTED, REJECTED or HELD
    reason: str
    candidate_score: Report | None = None
    active_score: Report | None = None  # with "version": the active version's number

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED


def compare(candidate: Report, active: Report, *, type_margin: float) -> tuple[bool, str]:
    """Whether ``candidate`` is at least as good as ``active`` overall and per type (within the margin)."""
    if candidate["f1"] + _EPSILON < active["f1"]:
        return False, f"gate F1 {candidate['f1']:.4f} < {active['f1']:.4f}"
    candidate_types = candidate.get("per_type") or {}
    worse = []
    for name, row in sorted((active.get("per_type") or {}).items()):
        theirs = row["f1"]
        ours = (candidate_types.get(name) or {}).get("f1", 0.0)
        if ours + type_margin + _EPSILON < theirs:
            worse.append(f"{name} {ours:.4f} < {theirs:.4f}")
    if worse:
        return False, f"entity types worse by more than {type_margin:g}: {', '.join(worse)}"
    return True, (
        f"gate F1 {candidate['f1']:.4f} >= {active['f1']:.4f}, no type worse by more than {type_margin:g}"
    )


def _stamp(report: Report, gate_set: GateSet) -> Report:
    return {**report, "gate_hash": gate_set.gate_hash, "sentences": gate_set.sentences}


def active_score(*, active: ModelVersion, gate_set: GateSet) -> Report:
    """The active version's gate score: cached on its row under the gate set's hash, else measured."""
    cached = active.gate_score
    if cached and cached.get("gate_hash") == gate_set.gate_hash:
        return cached
    score = _stamp(gate_set.score(active.path), gate_set)
    active.gate_score = score  # saved with the decision's commit: the next candidate reuses it
    return score


def _is_bootstrap(session: Session, candidate: ModelVersion) -> bool:
    """Whether the candidate came from the bootstrap run the service itself queued (no caller's key).

    ``shared.training.bootstrap`` marks that run's params with ``bootstrap``; a request cannot set it
    (unknown parameters are refused), and its data is the operator's NER_BOOTSTRAP_DATA.
    """
    if candidate.training_run_id is None:
        return False
    run = session.get(TrainingRun, candidate.training_run_id)
    return run is not None and run.api_key_id is None and bool((run.params or {}).get("bootstrap"))


def decide(
    *,
    session: Session,
    candidate: ModelVersion,
    policy: str,
    gate_set: GateSet | None = None,
    type_margin: float = 0.02,
    default_base_model: str | None = None,
    promote_first: bool = False,
) -> Decision:
    """The gate's decision on ``candidate`` under ``policy`` (``f1``: judge on the gate set; ``never``).

    ``promote_first`` (NER_GATE_PROMOTE_FIRST) lets a candidate of an empty registry go live.
    """
    if policy not in ("f1", "never"):
        raise RegistryError(f"unknown promote policy {policy!r}")
    own_score = None
    if gate_set is not None:
        try:
            own_score = _stamp(gate_set.score(candidate.path), gate_set)
        except Exception as exc:  # a candidate the engine cannot load or run is not promoted
            log.exception("scoring version %s on the gate set failed", candidate.version)
            return Decision(REJECTED, f"scoring it on the gate set failed ({type(exc).__name__})")
    active = get_active(session=session)
    theirs = None
    if own_score is not None and active is not None:
        try:
            theirs = {**active_score(active=active, gate_set=gate_set), "version": active.version}
        except Exception:  # the active version cannot be measured: no automatic replacement below
            log.exception("scoring the active version %s on the gate set failed", active.version)
    if policy == "never":
        return Decision(HELD, "promote policy is 'never': left as a candidate", own_score, theirs)
    if default_base_model is not None and candidate.base_model != default_base_model:
        return Decision(
            HELD,
            "trained from its own base model: left as a candidate for an admin to activate",
            own_score,
            theirs,
        )
    if active is None:
        # Nothing to compare with: a first version goes live only when the operator chose it.
        if promote_first:
            return Decision(PROMOTED, "no active version (NER_GATE_PROMOTE_FIRST=true)", own_score)
        if _is_bootstrap(session, candidate):
            return Decision(PROMOTED, "no active version: the operator's bootstrap run", own_score)
        return Decision(
            HELD,
            "no active version to compare with: left as a candidate for an admin to activate "
            "(NER_GATE_PROMOTE_FIRST=true promotes a first version)",
            own_score,
        )
    if own_score is None:
        return Decision(HELD, "no gate set (NER_GATE_DATA): left as a candidate for an admin")
    if theirs is None:
        return Decision(
            HELD, f"the active version {active.version} could not be scored on the gate set", own_score
        )
    better, why = compare(own_score, theirs, type_margin=type_margin)
    reason = f"{why} (active version {active.version}, {own_score['sentences']} gate sentences)"
    return Decision(PROMOTED if better else REJECTED, reason, own_score, theirs)


def record(*, candidate: ModelVersion, decision: Decision) -> None:
    """Store the decision, its reason and both scores on the version (flushed with the session)."""
    candidate.gate_decision = decision.decision
    candidate.gate_reason = decision.reason
    candidate.gate_score = decision.candidate_score
    candidate.gate_active_score = decision.active_score
