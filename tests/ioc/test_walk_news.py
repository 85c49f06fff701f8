"""The DM backend's walks of storage trees on Status: the command says the ACLs follow in the background, the
walk's end is said once (as news of that command while it is the last, else its own, never over a failure),
its progress now and then; the walks a restart interrupted are resumed, and said."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from dmagic_ioc.ioc.app.supervisor import WALK_NEWS_SECONDS
from dmagic_ioc.ioc.domain.ports import WalkEnd, WalkProgress

from ..fakes.ports import EXPERIMENT
from ..helpers import until
from .rig import MAJOR, MINOR, NO, WAIT_SECONDS, blocking_schedule, fails, refreshed_and_created, run, status

GAVE = f"gave d310011 access to the files of {EXPERIMENT}: 100000 files in 12.5 s"


class FakeWalks:
    """`ports.Walks`: the walks the fake DM left to the background (`queued` at its next call), and what the
    test says they do."""

    def __init__(self) -> None:
        self.queued = 0
        self.now = WalkProgress()
        self.claims: list[str] = []
        self.resumed: str | None = None

    def claim(self, by: str) -> int:
        claimed, self.queued = self.queued, 0
        if claimed:
            self.claims.append(by)
        return claimed

    def progress(self) -> WalkProgress:
        return self.now

    def resume(self) -> str | None:
        return self.resumed

    def end(self, message: str, **how) -> None:
        """One more walk ended."""
        number = len(self.now.ended) + 1
        self.now = replace(self.now, doing="", ended=(*self.now.ended, WalkEnd(number, message, **how)))


def with_walks(rig) -> FakeWalks:
    walks = rig.services.adapters.walks = FakeWalks()
    return walks


async def add_user(rig, walks: FakeWalks) -> None:
    walks.queued = 1  # the DM backend leaves the files' ACLs to the background
    await rig.ioc.experiment.badges.write("310011")
    await run(rig.ioc.experiment.add_user)


async def test_add_user_says_the_acls_follow_and_their_end_is_its_news(rig):
    walks = with_walks(rig)
    await refreshed_and_created(rig)
    await add_user(rig, walks)
    said, severity = status(rig)
    assert severity == NO
    assert said == f"gave d310011 access to {EXPERIMENT}; the ACLs of its files follow in the background", said
    assert walks.claims == ["AddUser"]
    walks.end(GAVE, by="AddUser")
    await rig.supervisor.poll_walks()
    assert status(rig) == (GAVE, NO)
    assert rig.ioc.status.last_command.value == "AddUser"
    await run(rig.ioc.proposal.refresh)
    await rig.supervisor.poll_walks()  # said once
    assert status(rig)[0].startswith("proposal ")


async def test_the_end_of_a_walk_is_said_after_another_command_but_never_over_a_failure(rig):
    walks = with_walks(rig)
    await refreshed_and_created(rig)
    await add_user(rig, walks)
    await run(rig.ioc.proposal.refresh)  # other commands answer while the walk runs
    walks.end(GAVE, by="AddUser")
    await rig.supervisor.poll_walks()
    assert status(rig) == (GAVE, NO)  # said whatever ran since: its own news

    await add_user(rig, walks)
    await rig.ioc.experiment.delete_confirm.write("not it")
    await fails(rig.ioc.experiment.delete)
    failure = status(rig)
    assert failure[1] == MAJOR
    walks.end(GAVE, by="AddUser")
    await rig.supervisor.poll_walks()
    assert status(rig) == failure  # logged, not said over it
    walks.end("removing the storage of X failed: Permission denied", failed=True)
    await rig.supervisor.poll_walks()
    assert status(rig) == ("removing the storage of X failed: Permission denied", MAJOR)


async def test_a_walk_that_left_files_alone_warns_and_keeps_its_commands_warning(rig):
    walks = with_walks(rig)
    await refreshed_and_created(rig)
    await add_user(rig, walks)
    left = f"{GAVE}; ACLs of /s: not given to 2 files with more than one hard link (e.g. data/x)"
    walks.end(left, warning=True, by="AddUser")
    await rig.supervisor.poll_walks()
    assert status(rig) == (left, MINOR)


async def test_the_end_of_a_walk_waits_while_a_command_runs(rig):
    walks = with_walks(rig)
    await refreshed_and_created(rig)
    schedule = blocking_schedule(rig)
    refresh = asyncio.create_task(run(rig.ioc.proposal.refresh))
    await until(schedule.entered.is_set, WAIT_SECONDS, what="the Refresh running")
    walks.end(GAVE)
    await rig.supervisor.poll_walks()
    assert status(rig)[0] == "Refresh running"
    schedule.release.set()
    await refresh
    await rig.supervisor.poll_walks()
    assert status(rig) == (GAVE, NO)


async def test_a_long_walk_says_how_far_it_is_now_and_then_while_its_command_is_the_last(rig):
    walks = with_walks(rig)
    await refreshed_and_created(rig)
    await add_user(rig, walks)
    outcome = status(rig)
    running = WalkProgress(doing=f"giving d310011 access to the files of {EXPERIMENT}", by="AddUser",
                           files_done=40000, files_total=100000, seconds=1.0)  # fmt: skip
    walks.now = running
    await rig.supervisor.poll_walks()
    assert status(rig) == outcome  # not yet: it has run a second
    walks.now = replace(running, seconds=WALK_NEWS_SECONDS)
    await rig.supervisor.poll_walks()
    assert status(rig) == (f"giving d310011 access to the files of {EXPERIMENT}: 40000 files of about 100000", NO)
    walks.now = replace(walks.now, files_done=50000)
    await rig.supervisor.poll_walks()
    assert "40000 files" in status(rig)[0]  # not again so soon
    await run(rig.ioc.proposal.refresh)
    refreshed = status(rig)
    rig.supervisor._walk_progress_at = 0.0  # long after
    await rig.supervisor.poll_walks()
    assert status(rig) == refreshed  # another command is the last: its outcome stays


async def test_delete_claims_the_removal_of_its_storage(rig):
    walks = with_walks(rig)
    await refreshed_and_created(rig)
    walks.queued = 1
    await rig.ioc.experiment.delete_confirm.write(EXPERIMENT)
    await run(rig.ioc.experiment.delete)
    assert walks.claims == ["Delete"]
    walks.end(f"removed the storage /s of deleted experiment {EXPERIMENT}: 100000 files in 20.0 s", by="Delete")
    await rig.supervisor.poll_walks()
    assert status(rig)[0].startswith("removed the storage /s")


async def test_the_walks_a_restart_interrupted_are_resumed_and_said(rig):
    walks = with_walks(rig)
    walks.resumed = f"resumed 1 walk of experiment storage: giving d310011 access to the files of {EXPERIMENT}"
    timer = asyncio.create_task(rig.supervisor._walk_timer())
    try:
        await until(lambda: status(rig)[0] == walks.resumed, WAIT_SECONDS, what="the resumed walks said")
    finally:
        timer.cancel()
