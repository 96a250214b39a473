"""Engines: results, event streaming, errors; in-process and with spawned workers."""

import os

import pytest

from zooscape.zoo.engines import Engine, EngineError, LocalEngine, emit, get_engine


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


def test_process_engine_matches_inline_reuses_workers_and_reports_errors():
    tasks = list(range(7))
    with LocalEngine(workers=2) as engine:
        events = []
        out = list(engine.map(square_with_events, tasks, on_event=events.append, ordered=True))
        assert [r for r, _ in out] == [t * t for t in tasks]
        pids = {pid for _, pid in out}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        expected = [("step", t, k) for t in tasks for k in range(t % 3)]
        assert sorted(events) == sorted(expected)
        for t in tasks:  # per-task order is kept
            assert [e for e in events if e[1] == t] == [e for e in expected if e[1] == t]
        # a second call reuses the same worker processes; unordered results are complete
        again = list(engine.map(square_with_events, [3, 4], ordered=False))
        assert sorted(r for r, _ in again) == [9, 16]
        assert {pid for _, pid in again} <= {p.pid for p in engine._pool.procs}
        with pytest.raises(EngineError, match="task 2 exploded"):
            list(engine.map(boom, [0, 1, 2, 3]))
        assert engine._pool is None  # a failed call stops its workers


def test_inline_errors_propagate_unchanged():
    with pytest.raises(ArithmeticError):
        list(LocalEngine().map(boom, [2]))


def test_get_engine():
    assert isinstance(get_engine("local", 3), LocalEngine) and get_engine("local", 3).workers == 3
    with pytest.raises(ValueError, match="engine"):
        get_engine("spark")  # "ray" is an engine now (tests/zoo/test_zoo_ray.py)
    with pytest.raises(ValueError, match="workers"):
        LocalEngine(workers=0)
