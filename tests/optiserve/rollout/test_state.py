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
    assert store.models() == ["m"] and store.load("m").model == "m"
    assert not list((tmp_path / "rollouts").glob("*.tmp"))


# ---- a state that cannot be read stays its own problem ----------------------------------------

def test_an_older_state_is_migrated_and_a_newer_one_refused_by_name(tmp_path):
    import json

    from optiserve.rollout.state import STATE_SCHEMA_VERSION, UnreadableState, parse_state

    old = json.loads(RolloutState(spec=spec()).model_dump_json())
    old.pop("schema_version")
    old.pop("reset_at")  # format 1 had neither
    st = parse_state(json.dumps(old), "m")
    assert st.schema_version == STATE_SCHEMA_VERSION and st.reset_at is None
    newer = {**old, "schema_version": STATE_SCHEMA_VERSION + 1, "a_field_from_the_future": 1}
    with pytest.raises(UnreadableState, match="rollout state of m has format .* newer optiserve"):
        parse_state(json.dumps(newer), "m")
    with pytest.raises(UnreadableState, match="rollout state of m: spec.canary"):
        parse_state(json.dumps({**old, "spec": {**old["spec"], "canary": "x"}}), "m")


def test_one_unreadable_state_does_not_freeze_the_other_rollouts(tmp_path):
    """Two rollouts; one's state is written by a newer optiserve (a field this one does not
    know): that one is reported and skipped, the other goes on to promotion (it used to freeze
    every rollout: the store's list() parsed every state and tick() returned on its error)."""
    import json

    from optiserve.rollout.controller import Controller
    from tests.optiserve.rollout.test_controller import RecordingTarget, StandInPrometheus

    prom = StandInPrometheus(10)
    target = RecordingTarget(prom)
    store = FileStateStore(tmp_path / "state")
    errors = []
    ctl = Controller(store, target, prom)
    ctl.metrics.error = lambda model, kind: errors.append((model, kind))
    ctl.start("m", 2, steps=[50, 100], interval_s=1, min_requests=1, scrape_interval_s=0.25,
              shadow=0.5, max_p99_ratio=None, keep=True)
    alien = json.loads(RolloutState(spec=spec(model="a")).model_dump_json())
    alien["spec"]["a_new_option"] = True  # a newer optiserve's field
    (tmp_path / "state" / "a.json").write_text(json.dumps(alien))
    import time as _time
    deadline = _time.monotonic() + 30
    while _time.monotonic() < deadline and store.load("m").phase != "promoted":
        ctl.tick()
        _time.sleep(0.05)
    assert store.load("m").phase == "promoted"
    assert ("a", "store") in errors
