"""The download scheduler's slots: a transfer whose bytes are in gives its slot to the next URL
while they are stored, and the bodies waiting to be stored stay bounded."""

from __future__ import annotations

import asyncio

from carcrawl.config import DownloadSettings
from carcrawl.download import HostScheduler
from carcrawl.net import HttpClient, host_key
from carcrawl.store.writer import DownloadTask


async def test_a_transfer_frees_its_slot_for_the_next_while_its_bytes_are_stored_and_storing_is_bounded() -> None:
    client = HttpClient(DownloadSettings(per_host_concurrency=8, per_host_interval=0.0), "carcrawl-test/1.0")
    disk = asyncio.Event()  # the "disk": storing waits until the test lets it go on
    started: list[int] = []
    stored: list[int] = []
    transferring = storing = most_transferring = most_storing = 0

    async def run(task: DownloadTask):  # what DownloadStage._fetch_one hands the scheduler
        nonlocal transferring, most_transferring
        started.append(task.candidate_id)
        transferring += 1
        most_transferring = max(most_transferring, transferring)
        await asyncio.sleep(0.005)
        transferring -= 1
        client.hosts.release(host_key(task.url))  # as fetch_image does when its transfer ends

        async def store() -> None:
            nonlocal storing, most_storing
            storing += 1
            most_storing = max(most_storing, storing)
            await disk.wait()
            storing -= 1
            stored.append(task.candidate_id)

        return store

    scheduler = HostScheduler(client, concurrency=2, buffer=20, run=run)
    async with asyncio.TaskGroup() as group:
        scheduler.start(group)
        for i in range(12):
            assert await scheduler.submit(DownloadTask(i, f"http://h{i % 3}.example/{i}.jpg", 0))
        await asyncio.sleep(0.2)
        # two stored-in-waiting have freed their transfer slots, two more transfers finished and
        # wait in their slots for a storing one: not 2 (slots held through storing), not 12
        assert (len(started), storing, scheduler.active) == (4, 2, 2)
        disk.set()
        await asyncio.wait_for(scheduler.wait_idle(), 10)
    assert sorted(stored) == list(range(12))
    assert most_transferring <= 2 and most_storing <= 2
    assert scheduler.held == 0
