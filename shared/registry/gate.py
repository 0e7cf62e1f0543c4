"""Whether a candidate version may become active without an operator's say."""

from __future__ import annotations

from sqlalchemy.orm import Session

from shared.core.tables import ModelVersion
from shared.registry.errors import RegistryError
from shared.registry.service import get_active


def decide(*, session: Session, candidate: ModelVersion, policy: str) -> tuple[bool, str]:
    """Whether ``candidate`` should become active under ``policy`` (``f1`` or ``never``), and why."""
    if policy == "never":
        return False, "promote policy is 'never': left as a candidate"
    if policy != "f1":
        raise RegistryError(f"unknown promote policy {policy!r}")
    active = get_active(session=session)
    if active is None:
        return True, "no active version"
    if active.val_f1 is None:
        return True, f"active version {active.version} has no validation F1"
    if candidate.val_f1 is not None and candidate.val_f1 >= active.val_f1:
        return (
            True,
            f"validation F1 {candidate.val_f1:.4f} >= {active.val_f1:.4f} of version {active.version}",
        )
    shown = "none" if candidate.val_f1 is None else f"{candidate.val_f1:.4f}"
    return False, f"validation F1 {shown} < {active.val_f1:.4f} of active version {active.version}"
