"""Engines: results, event streaming, errors; in-process and with spawned workers."""

import os

import pytest

from zooscape.zoo.engine import Engine, EngineError, LocalEngine, emit, get_engine


def square_with_events(task):
    for k in range(task % 3):
        emit(("step", task, k))
    return task * task, os.getpid()


def boom(task):
    if task == 2:
        raise ArithmeticError(f"task {task} exploded")
    return task


def test_emit_outside_engine_is_noop():
    emit("nobody listens")


def test_inline_engine_runs_in_process_and_streams_events():
    events = []
    engine = LocalEngine(workers=1)
    assert isinstance(engine, Engine)
    out = list(engine.map(square_with_events, [0, 1, 2, 5], on_event=events.append))
    assert [r for r, _ in out] == [0, 1, 4, 25]
    assert {pid for _, pid in out} == {os.getpid()}
    assert events == [("step", 1, 0), ("step", 2, 0), ("step", 2, 1), ("step", 5, 0), ("step", 5, 1)]


def test_process_engine_matches_inline():
    tasks = list(range(7))
    events = []
    out = list(LocalEngine(workers=2).map(square_with_events, tasks, on_event=events.append, ordered=True))
    assert [r for r, _ in out] == [t * t for t in tasks]
    assert os.getpid() not in {pid for _, pid in out}
    expected = [("step", t, k) for t in tasks for k in range(t % 3)]
    assert sorted(events) == sorted(expected)
    for t in tasks:  # per-task order is kept
        assert [e for e in events if e[1] == t] == [e for e in expected if e[1] == t]


def test_process_engine_reports_task_errors():
    with pytest.raises(EngineError, match="task 2 exploded"):
        list(LocalEngine(workers=2).map(boom, [0, 1, 2, 3]))


def test_inline_errors_propagate_unchanged():
    with pytest.raises(ArithmeticError):
        list(LocalEngine().map(boom, [2]))


def test_get_engine():
    assert isinstance(get_engine("local", 3), LocalEngine) and get_engine("local", 3).workers == 3
    with pytest.raises(ValueError, match="engine"):
        get_engine("ray")
    with pytest.raises(ValueError, match="workers"):
        LocalEngine(workers=0)
