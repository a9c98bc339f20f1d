"""Rollout spec validation, the phase state machine, and the file state store."""

from __future__ import annotations

import pytest

from optiserve.rollout import FileStateStore, RolloutSpec, RolloutState, StaleState


def spec(**kw) -> RolloutSpec:
    return RolloutSpec(**{"model": "m", "stable": 1, "canary": 2, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"canary": 1}, "canary (1) equals stable (1)"),
    ({"steps": [10, 50]}, "the last step must be 100"),
    ({"steps": [50, 10, 100]}, "steps must increase"),
    ({"steps": [0, 100]}, "percentages in (0, 100]"),
    ({"shadow": 0}, "min_agreement needs shadow > 0"),
    ({"failure_budget": -1}, "failure_budget"),
])
def test_invalid_specs_are_refused(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        spec(**kw)


def test_state_machine_allows_only_forward_transitions():
    st = RolloutState(spec=spec())
    st.transition("progressing", "go")
    st.transition("promoted", "done")
    assert st.done and [t.to_phase for t in st.history] == ["progressing", "promoted"]
    with pytest.raises(ValueError, match="promoted -> progressing is not allowed"):
        st.transition("progressing", "again")


def test_file_store_saves_atomically_and_refuses_stale_writes(tmp_path):
    store = FileStateStore(tmp_path / "rollouts")
    first = store.save(RolloutState(spec=spec()))
    assert first.revision == 1 and store.load("m").revision == 1
    second = store.save(first.model_copy(update={"step": 1}))
    assert second.revision == 2 and store.load("m").step == 1
    with pytest.raises(StaleState):
        store.save(first)  # based on revision 1, but 2 is saved
    assert [s.model for s in store.list()] == ["m"]
    assert not list((tmp_path / "rollouts").glob("*.tmp"))
