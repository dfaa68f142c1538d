"""The scene state machine (``tilesegd.batch.states``) on its own, over a ledger kept in memory
the way an object store keeps objects (whole writes, no rename, no append, a completion marker
per published scene): each transition and the entry it writes, the skip / add-products /
pending paths, fatal errors, and Hypothesis property tests that compare the ``run.json``
statuses of random sequences of scene outcomes (finished, failed, a fatal output failure, a
stop at a random point), run one scene after the other as the local runner does and
interleaved as the Dask runner does, with a plain reference model of the rules."""

from __future__ import annotations

import errno
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tilesegd.batch.layout import REQUIRED_OUTPUTS, SCENE_OUTPUTS
from tilesegd.batch.states import STOPPED, RunStates
from tilesegd.errors import DeviceError, InputError, Interrupted, OutputError

FP = "f" * 16
VECTOR = {"vector": {"classes": None, "simplify": 0.0}}
MARKER = "_COMPLETE"


class MemoryLedger:
    """A :class:`~tilesegd.batch.ledger.Ledger` over a dict of objects: every write puts one
    whole object, and a scene counts as published once its completion marker is there."""

    def __init__(self, previous: dict[str, dict[str, Any]] | None = None) -> None:
        self.location = "mem://bucket/run"
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []  # object keys in the order written
        self.full = False  # every write fails (a full disk)
        self.cleaned = 0
        if previous is not None:
            self.objects["run.json"] = json.dumps({"scenes": previous}).encode()

    def put(self, key: str, data: Any) -> None:
        if self.full:
            raise OutputError(f"{self.location}/{key}: disk full, cannot write")
        self.objects[key] = json.dumps(data).encode()
        self.puts.append(key)

    def publish(self, name: str, files=REQUIRED_OUTPUTS) -> None:
        """What a runner's finish step does: the scene's objects first, the marker last."""
        for f in files:
            self.put(f"{name}/{f}", f)
        self.put(f"{name}/{MARKER}", "")

    def run_doc(self) -> dict[str, Any]:
        return json.loads(self.objects["run.json"])

    # the Ledger interface
    def previous_scenes(self) -> dict[str, dict[str, Any]]:
        raw = self.objects.get("run.json")
        return json.loads(raw).get("scenes", {}) if raw else {}

    def published(self, name: str) -> bool:
        return f"{name}/{MARKER}" in self.objects

    def scene_files(self, name: str) -> dict[str, str]:
        have = {k.split("/", 1)[1] for k in self.objects if k.startswith(f"{name}/")}
        return {f: f"{self.location}/{name}/{f}" for f in SCENE_OUTPUTS if f in have}

    def prepare_work(self, name: str, marker: dict[str, Any], discard: bool) -> None:
        self.put(f".tilesegd/work/{name}/work.json", marker)

    def write_run(self, doc: dict[str, Any]) -> None:
        self.put("run.json", doc)

    def read_json(self, name: str) -> Any:
        raw = self.objects.get(name)
        return json.loads(raw) if raw else None

    def write_json(self, name: str, doc: Any) -> None:
        self.put(name, doc)

    def products_work(self, name: str):  # noqa: ANN201
        return Path("/nonexistent") / name, f"{self.location}/{name}/pred.zarr"

    def deliver_products(self, name: str, work) -> dict[str, str]:  # noqa: ANN001
        return self.scene_files(name)

    def write_summaries(self, done) -> dict[str, str]:
        self.put("summary.csv", sorted(done))
        return {"summary.csv": f"{self.location}/summary.csv"}

    def output_failure(self, exc: BaseException) -> OutputError | None:
        if isinstance(exc, OutputError):
            return exc
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return OutputError(f"{self.location}: disk full ({exc.strerror})")
        return None

    def remove_temporaries(self) -> None:
        self.cleaned += 1


def done_entry(products: dict[str, Any] | None = None, fp: str = FP) -> dict[str, Any]:
    return {"input": "x", "fingerprint": fp, "input_stat": None, "status": "done",
            "products": products or {}, "polygons": 7}  # fmt: skip


def states_for(ledger: MemoryLedger, names, stop=None, add=None, products=None) -> RunStates:
    return RunStates(ledger, names, {"model": "m"}, FP, stop=stop or threading.Event(),
                     products=products or {}, add_products=add)  # fmt: skip


def test_a_scene_goes_through_its_states_and_each_end_writes_run_json() -> None:
    ledger = MemoryLedger()
    with states_for(ledger, ["a"]) as states:
        scene = states.admit(Path("in/a.tif"), "a")
        assert scene.state == "started" and "status" not in states.scenes["a"]
        assert ledger.puts == [".tilesegd/work/a/work.json"]  # the work area, nothing else
        scene.planned(blocks_resumed=2, tile_size=64)
        assert states.scenes["a"] == {"input": "in/a.tif", "fingerprint": FP,
                                      "input_stat": None, "status": "running",
                                      "blocks_resumed": 2, "tile_size": 64}  # fmt: skip
        scene.blocks_done(megapixels_per_s=1.5, tiles_run=9, tiles_skipped=1)
        ledger.publish("a")
        scene.finished({"blocks": 4, "outputs": {"mask.tif": "m"}})
        assert ledger.puts[-1] == "run.json" and ledger.run_doc()["scenes"]["a"]["status"] == "done"
    entry = states.doc["scenes"]["a"]
    assert list(entry) == ["input", "fingerprint", "input_stat", "status", "seconds",
                           "megapixels_per_s", "tiles_run", "tiles_skipped", "blocks_resumed",
                           "tile_size", "blocks", "outputs"]  # fmt: skip
    assert scene.state == "finished" and scene.ended
    assert ledger.puts[-2:] == ["summary.csv", "run.json"]  # run.json last of all
    assert ledger.run_doc() == states.doc and states.doc["status"] == "done"


@pytest.mark.parametrize(
    "steps",
    [
        ["finished"],
        ["blocks_done"],
        ["planned", "finished"],
        ["planned", "planned"],
        ["planned", "blocks_done", "finished", "failed"],
        ["failed", "planned"],
        ["interrupted", "interrupted"],
    ],
)
def test_a_transition_out_of_order_is_refused(steps: list[str]) -> None:
    states = states_for(MemoryLedger(), ["a"])
    scene = states.admit(Path("a.tif"), "a")
    calls = {
        "planned": lambda: scene.planned(0, 64),
        "blocks_done": lambda: scene.blocks_done(),
        "finished": lambda: scene.finished({}),
        "failed": lambda: scene.failed(InputError("bad")),
        "interrupted": lambda: scene.interrupted(),
    }
    for step in steps[:-1]:
        calls[step]()
    before = scene.state
    with pytest.raises(RuntimeError, match=f"no transition {before} -> "):
        calls[steps[-1]]()
    assert scene.state == before


def test_skip_add_products_and_pending() -> None:
    previous = {"done": done_entry(VECTOR), "lacks": done_entry(), "old": done_entry(fp="0" * 16)}
    ledger = MemoryLedger(previous)
    for name in ("done", "lacks", "old"):
        ledger.publish(name, (*REQUIRED_OUTPUTS, "polygons.gpkg"))
    ledger.objects.pop("lacks/polygons.gpkg")
    added = []

    def add(path, name, which):
        added.append((name, which))
        ledger.put(f"{name}/polygons.gpkg", "p")
        return {"polygons": 3}

    stop = threading.Event()
    names = ["done", "lacks", "old", "new"]
    with pytest.raises(Interrupted, match="mem://bucket/run: stopped by a signal"):
        with states_for(ledger, names, stop, add, VECTOR) as states:
            ledger.puts.clear()
            assert states.admit(Path("d.tif"), "done") is None  # skipped: nothing written
            assert ledger.puts == []
            assert states.admit(Path("l.tif"), "lacks") is None  # products added
            assert added == [("lacks", {"vector"})] and ledger.puts[-1] == "run.json"
            stop.set()
            assert states.admit(Path("o.tif"), "old") is None  # another fingerprint: pending
            assert states.admit(Path("n.tif"), "new") is None
    scenes = ledger.run_doc()["scenes"]
    assert scenes["done"]["skipped"] is True and scenes["done"]["products"] == VECTOR
    assert set(scenes["done"]["outputs"]) == {*REQUIRED_OUTPUTS, "polygons.gpkg"}
    assert scenes["lacks"]["products_added"] == ["vector"] and scenes["lacks"]["polygons"] == 3
    assert scenes["lacks"]["products"] == VECTOR and "polygons.gpkg" in scenes["lacks"]["outputs"]
    assert (
        scenes["old"]
        == {"status": "pending", "input": "o.tif"}
        == {**scenes["new"], "input": "o.tif"}
    )
    assert ledger.run_doc()["status"] == "interrupted"


def test_a_skipped_scene_whose_product_files_are_gone_drops_the_product() -> None:
    ledger = MemoryLedger({"s": done_entry(VECTOR)})
    ledger.publish("s")  # polygons.gpkg is gone
    with states_for(ledger, ["s"]) as states:  # the run asks for no product
        assert states.admit(Path("s.tif"), "s") is None
    entry = ledger.run_doc()["scenes"]["s"]
    assert entry["products"] == {} and "polygons" not in entry and entry["skipped"] is True


def test_a_failed_scene_is_recorded_and_the_run_goes_on() -> None:
    ledger = MemoryLedger()
    with states_for(ledger, ["bad", "good"]) as states:
        bad = states.admit(Path("bad.tif"), "bad")
        bad.planned(0, 64)
        bad.failed(InputError("bad.tif: cannot be decoded"))
        assert ledger.run_doc()["scenes"]["bad"]["status"] == "failed"
        good = states.admit(Path("good.tif"), "good")
        bad_os = OSError(errno.EIO, "I/O error")
        good.failed(bad_os)  # an input's OSError, not an output: not fatal
    scenes = ledger.run_doc()["scenes"]
    assert list(scenes["bad"]) == ["input", "fingerprint", "input_stat", "status", "error",
                                   "seconds"]  # fmt: skip
    assert scenes["bad"]["error"] == "bad.tif: cannot be decoded"
    assert scenes["good"]["error"] == "good.tif: [Errno 5] I/O error"
    assert ledger.run_doc()["status"] == "failed"


def test_an_output_failure_raises_itself_and_fails_the_scenes_in_flight() -> None:
    ledger = MemoryLedger({"later": done_entry(), "other": {"status": "failed"}})
    with pytest.raises(OutputError, match="disk full") as err:
        with states_for(ledger, ["a", "b", "later"]) as states:
            a = states.admit(Path("a.tif"), "a")
            b = states.admit(Path("b.tif"), "b")
            a.planned(0, 64)
            b.planned(0, 64)
            ledger.puts.clear()
            a.failed(OSError(errno.ENOSPC, "No space left on device"))
            pytest.fail("failed() must raise the fatal error")  # pragma: no cover
    assert states.fatal is err.value and ledger.cleaned == 1
    # no write of a's entry before the end
    assert ledger.puts == ["catalog.json", "summary.csv", "run.json"]
    doc = ledger.run_doc()
    assert doc["status"] == "failed"
    assert doc["scenes"]["a"]["error"] == doc["scenes"]["b"]["error"] == str(err.value)
    assert doc["scenes"]["b"]["status"] == "failed"
    assert "seconds" not in doc["scenes"]["a"] and "seconds" not in doc["scenes"]["b"]
    assert doc["scenes"]["later"] == done_entry()  # never admitted: its last record is kept
    assert "other" not in doc["scenes"]  # not a scene of this run


def test_a_fatal_error_is_raised_once_and_a_swallowed_one_still_ends_the_run() -> None:
    ledger = MemoryLedger()
    states = states_for(ledger, ["a", "b", "c"])
    a, b = states.admit(Path("a.tif"), "a"), states.admit(Path("b.tif"), "b")
    with pytest.raises(OutputError) as first:
        a.failed(OutputError("mem://bucket/run/a/mask.tif: disk full"))
    b.failed(OutputError("mem://bucket/run/b/mask.tif: disk full"))  # recorded, not raised
    assert states.scenes["b"]["status"] == "failed"
    with pytest.raises(OutputError) as again:
        states.admit(Path("c.tif"), "c")  # a caller that went on
    assert again.value is first.value
    with pytest.raises(OutputError) as closing:
        states.close()
    assert closing.value is first.value and ledger.run_doc()["status"] == "failed"


def test_ends_run_makes_a_device_error_fatal() -> None:
    ledger = MemoryLedger()
    with pytest.raises(DeviceError, match="worker w1"):
        with states_for(ledger, ["a", "b"]) as states:
            states.admit(Path("a.tif"), "a").failed(DeviceError("model ran on cpu"))
            assert states.fatal is None  # a scene's device error alone does not end the run
            states.admit(Path("b.tif"), "b").failed(DeviceError("worker w1"), ends_run=True)
    scenes = ledger.run_doc()["scenes"]
    assert scenes["a"]["error"] == "model ran on cpu" and scenes["b"]["error"] == "worker w1"


def test_a_work_area_that_cannot_be_written_stops_the_run() -> None:
    class NoWork(MemoryLedger):
        def prepare_work(self, name, marker, discard):
            raise OutputError(f"{self.location}/.tilesegd/work/{name}: cannot be written")

    ledger = NoWork()
    with pytest.raises(OutputError, match="cannot be written"):
        with states_for(ledger, ["a"]) as states:
            states.admit(Path("a.tif"), "a")
    entry = ledger.run_doc()["scenes"]["a"]
    assert entry["status"] == "failed" and "seconds" not in entry  # it never started


def test_a_run_json_that_cannot_be_written_ends_the_run_keeping_the_last_one() -> None:
    ledger = MemoryLedger()
    with pytest.raises(OutputError, match=r"(run|catalog)\.json: disk full"):
        with states_for(ledger, ["a", "b"]) as states:
            a = states.admit(Path("a.tif"), "a")
            a.failed(InputError("a.tif: bad"))
            kept = ledger.objects["run.json"]
            b = states.admit(Path("b.tif"), "b")
            b.planned(0, 64)
            b.blocks_done()
            ledger.full = True
            b.finished({})
    assert ledger.objects["run.json"] == kept and ledger.cleaned == 1
    assert states.scenes["b"]["status"] == "done" and states.doc["status"] == "failed"


def test_a_stop_interrupts_the_scenes_in_flight_at_the_close() -> None:
    ledger, stop = MemoryLedger(), threading.Event()
    with pytest.raises(Interrupted):
        with states_for(ledger, ["a", "b", "c"], stop) as states:
            states.admit(Path("a.tif"), "a").planned(0, 64)
            states.admit(Path("b.tif"), "b")
            stop.set()
            assert states.admit(Path("c.tif"), "c") is None
            ledger.puts.clear()
    scenes = ledger.run_doc()["scenes"]
    assert [scenes[n]["status"] for n in "abc"] == ["interrupted", "interrupted", "pending"]
    assert scenes["a"]["error"] == STOPPED  # ended by the run: recorded as it stood
    assert list(scenes["a"]) == ["input", "fingerprint", "input_stat", "status",
                                 "blocks_resumed", "tile_size", "error"]  # fmt: skip
    assert ledger.puts == ["catalog.json", "summary.csv", "run.json"]  # one write at the close


# ------------------------------------------------------------------ property tests

PREVIOUS = ("none", "done", "lacks product", "other fingerprint", "failed")
OUTCOMES = (
    "finished",
    "failed at plan",
    "failed at finish",
    "fatal at blocks",
    "fatal at finish",
    "interrupted at blocks",
    "run.json full",
)
PRODUCT_OUTCOMES = ("added", "failed", "fatal")


@dataclass(frozen=True)
class Case:
    """One scene: its previous run.json record, what happens when it runs, and what happens
    when products are added to it."""

    previous: str
    outcome: str
    products: str


cases = st.lists(
    st.builds(
        Case,
        st.sampled_from(PREVIOUS),
        st.sampled_from(OUTCOMES),
        st.sampled_from(PRODUCT_OUTCOMES),
    ),  # fmt: skip
    min_size=1,
    max_size=6,
)


def setup_ledger(scenes: list[Case]) -> MemoryLedger:
    previous = {}
    for i, c in enumerate(scenes):
        if c.previous == "failed":
            previous[f"s{i}"] = {"input": "x", "status": "failed", "error": "old"}
        elif c.previous != "none":
            fp = "0" * 16 if c.previous == "other fingerprint" else FP
            previous[f"s{i}"] = done_entry(VECTOR, fp)
    ledger = MemoryLedger(previous)
    for i, c in enumerate(scenes):
        if c.previous in ("done", "lacks product", "other fingerprint"):
            ledger.publish(f"s{i}", (*REQUIRED_OUTPUTS, "polygons.gpkg"))
        if c.previous == "lacks product":
            ledger.objects.pop(f"s{i}/polygons.gpkg")
    ledger.puts.clear()
    return ledger


def adder(ledger: MemoryLedger, scenes: list[Case]):
    def add(path: Path, name: str, which: set[str]) -> dict[str, Any]:
        outcome = scenes[int(name[1:])].products
        if outcome == "fatal":
            raise OSError(errno.ENOSPC, "No space left on device")
        if outcome == "failed":
            raise InputError(f"{path}: zones outside the scene")
        ledger.put(f"{name}/polygons.gpkg", "p")
        return {"polygons": 1}

    return add


def advance(scene, case: Case, ledger: MemoryLedger, stop: threading.Event) -> None:
    """Run a started scene to its end as a runner does: ``case.outcome`` says where it
    stops (an output failure raises; the runner catches everything else)."""
    try:
        if case.outcome == "failed at plan":
            raise InputError(f"{scene.path}: not a raster")
        scene.planned(0, 64)
        if case.outcome == "fatal at blocks":
            raise OSError(errno.ENOSPC, "No space left on device")
        if case.outcome == "interrupted at blocks":
            stop.set()
            raise Interrupted(STOPPED)
        scene.blocks_done(tiles_run=1, tiles_skipped=0, megapixels_per_s=None)
        if case.outcome == "failed at finish":
            raise ValueError("a bug in the finish step")
        if case.outcome == "fatal at finish":
            raise OutputError(f"{ledger.location}/{scene.name}/mask.tif: disk full")
        ledger.publish(scene.name)
    except Interrupted as exc:
        scene.interrupted(str(exc))
        return
    except Exception as exc:
        scene.failed(exc)
        return
    ledger.full = case.outcome == "run.json full"
    scene.finished({"outputs": ledger.scene_files(scene.name)})


def reference(scenes: list[Case], stop_before: int | None) -> tuple[dict[str, str], str, Any]:
    """The rules, plainly: (scene statuses in run.json, the run's status, the error raised)
    of scenes run one after the other, a stop arriving before scene ``stop_before``."""
    status = {f"s{i}": "failed" if c.previous == "failed" else "done"
              for i, c in enumerate(scenes) if c.previous != "none"}  # fmt: skip
    stopped = interrupted = fatal = False
    for i, c in enumerate(scenes):
        name = f"s{i}"
        stopped = stopped or i == stop_before
        finished_before = c.previous in ("done", "lacks product")
        if finished_before and c.previous == "done":
            continue  # skipped: done
        if finished_before and not stopped:
            status[name] = "done" if c.products == "added" else "failed"
            if c.products == "fatal":
                fatal = True
                break
            continue
        if stopped:
            status[name], interrupted = "pending", True
            continue
        if c.outcome == "interrupted at blocks":
            status[name], interrupted, stopped = "interrupted", True, True
        elif c.outcome in ("finished", "run.json full"):
            status[name] = "done"
        else:
            status[name] = "failed"
        if c.outcome.startswith("fatal") or c.outcome == "run.json full":
            fatal = True
            break
    if fatal:
        return status, "failed", OutputError
    if interrupted:
        return status, "interrupted", Interrupted
    return status, "failed" if "failed" in status.values() else "done", None


def check_books(ledger: MemoryLedger, states: RunStates, status: dict[str, str]) -> None:
    """What was persisted agrees with the machine: the final run.json (unless the disk was
    full) is the document, written last after the summary of exactly the done scenes, and
    every done scene is published."""
    assert {n: e["status"] for n, e in states.scenes.items()} == status
    done = sorted(n for n, s in status.items() if s == "done")
    assert all(ledger.published(n) for n in done)
    if not ledger.full:
        assert ledger.puts[-2:] == ["summary.csv", "run.json"]
        assert ledger.run_doc() == json.loads(json.dumps(states.doc))
        assert json.loads(ledger.objects["summary.csv"]) == done


@settings(max_examples=examples(200), deadline=None)
@given(scenes=cases, stop_before=st.none() | st.integers(0, 6))
@example(scenes=[Case("lacks product", "finished", "fatal"), Case("none", "finished", "added")],
         stop_before=None)  # fmt: skip
@example(scenes=[Case("done", "fatal at blocks", "fatal"), Case("none", "run.json full", "added")],
         stop_before=0)  # fmt: skip
def test_one_scene_after_the_other_follows_the_rules(scenes: list[Case], stop_before) -> None:
    ledger, stop = setup_ledger(scenes), threading.Event()
    names = [f"s{i}" for i in range(len(scenes))]
    status, run_status, raised = reference(scenes, stop_before)
    states = states_for(ledger, names, stop, adder(ledger, scenes), VECTOR)
    try:
        with states:
            for i, (name, case) in enumerate(zip(names, scenes, strict=True)):
                if i == stop_before:
                    stop.set()
                scene = states.admit(Path(f"in/{name}.tif"), name)
                if scene is not None:
                    advance(scene, case, ledger, stop)
    except (OutputError, Interrupted) as exc:
        assert raised is not None and isinstance(exc, raised), exc
        if raised is OutputError:
            assert exc is states.fatal and ledger.cleaned == 1
    else:
        assert raised is None
    assert states.doc["status"] == run_status
    check_books(ledger, states, status)


def pipelined_reference(scenes: list[Case], order: list[int], stop_after: int | None):
    """The rules for scenes all admitted first (a Dask run plans and submits every scene),
    then ended in ``order``, a stop arriving after ``stop_after`` of them ended."""
    status = {f"s{i}": "failed" if c.previous == "failed" else "done"
              for i, c in enumerate(scenes) if c.previous != "none"}  # fmt: skip
    in_flight: list[int] = []
    for i, c in enumerate(scenes):
        if c.previous == "lacks product":
            status[f"s{i}"] = "done" if c.products == "added" else "failed"
            if c.products == "fatal":  # the scenes admitted before fail with it
                status.update({f"s{j}": "failed" for j in in_flight})
                return status, "failed", OutputError
        elif c.previous != "done":
            in_flight.append(i)
            status[f"s{i}"] = "running"
    ended = 0
    for i in [i for i in order if i in in_flight]:
        if ended == stop_after:
            break
        c, ended = scenes[i], ended + 1
        in_flight.remove(i)
        done = c.outcome in ("finished", "run.json full")
        status[f"s{i}"] = (
            "done" if done else "interrupted" if "interrupted" in c.outcome else "failed"
        )
        if c.outcome.startswith("fatal") or c.outcome == "run.json full":
            status.update({f"s{j}": "failed" for j in in_flight})
            return status, "failed", OutputError
        if "interrupted" in c.outcome:
            break
    status.update({f"s{j}": "interrupted" for j in in_flight})
    if in_flight or "interrupted" in status.values():
        return status, "interrupted", Interrupted
    return status, "failed" if "failed" in status.values() else "done", None


@settings(max_examples=examples(200), deadline=None)
@given(scenes=cases, order=st.permutations(range(6)), stop_after=st.none() | st.integers(0, 5))
@example(  # found by Hypothesis: a fatal error adding products fails the scenes in flight
    scenes=[Case("none", "finished", "added"), Case("lacks product", "finished", "fatal")],
    order=list(range(6)),
    stop_after=None,
)
def test_scenes_in_flight_together_follow_the_rules(scenes: list[Case], order, stop_after) -> None:
    order = [i for i in order if i < len(scenes)]  # the order the scenes end in
    ledger, stop = setup_ledger(scenes), threading.Event()
    names = [f"s{i}" for i in range(len(scenes))]
    status, run_status, raised = pipelined_reference(scenes, order, stop_after)
    states = states_for(ledger, names, stop, adder(ledger, scenes), VECTOR)
    try:
        with states:
            started = {}
            for name in names:
                scene = states.admit(Path(f"in/{name}.tif"), name)
                if scene is not None:
                    started[int(name[1:])] = scene
            ended = 0
            for i in [i for i in order if i in started]:
                if ended == stop_after or stop.is_set():
                    stop.set()
                    break  # the Dask runner leaves its loop; the close interrupts the rest
                advance(started[i], scenes[i], ledger, stop)
                ended += 1
    except (OutputError, Interrupted) as exc:
        assert raised is not None and isinstance(exc, raised), exc
    else:
        assert raised is None
    assert states.doc["status"] == run_status
    check_books(ledger, states, status)


def test_catalog_json_lists_the_finished_scenes_as_they_finish_and_never_a_failed_one() -> None:
    ledger = MemoryLedger({"old": done_entry()})
    ledger.publish("old")

    def listed() -> list[str]:
        links = ledger.read_json("catalog.json")["links"]
        return [x["href"] for x in links if x["rel"] == "item"]

    with states_for(ledger, ["old", "a", "b"]) as states:
        assert states.admit(Path("x"), "old") is None  # finished before: skipped
        a = states.admit(Path("a.tif"), "a")
        a.planned(0, 64)
        a.blocks_done()
        a.finished({})
        assert listed() == ["./a/item.json", "./old/item.json"]
        writes = ledger.puts.count("catalog.json")
        b = states.admit(Path("b.tif"), "b")
        b.failed(InputError("b.tif: bad"))
        assert ledger.puts.count("catalog.json") == writes  # nothing new finished: not rewritten
    assert listed() == ["./a/item.json", "./old/item.json"]
