"""The read-only page (GET /ui) in a real browser: Debian's Chromium driven by Playwright (no
browser is downloaded), over the real stack. It signs in with an API token and watches a VM
create wait for its VM, then complete, live."""

from __future__ import annotations

from pathlib import Path

from api_helpers import subject_with
from api_server import served
from helpers import resource_held
from playwright.async_api import async_playwright, expect

from conftest import Lab
from starter.api.app import create_app
from starter.client import TaskomaticClient
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest
from taskomatic.settings import Settings

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 15_000

async def test_the_page_shows_a_vm_create_go_from_waiting_to_complete(
        client: TaskomaticClient, settings: Settings, db: Database, lab: Lab,
        tmp_path: Path) -> None:
    host = lab.host()
    name = lab.vm_name("page")
    _, token = subject_with(db, [("viewer", "*")])
    async with served(create_app(settings, client, db)) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{url}/ui")
            await page.fill("#token", token)
            await page.click("#sign-in")
            await expect(page.locator("#status")).to_have_text("live", timeout=WAIT_MS)
            await expect(page.locator(f'#hosts tr[data-host="{host.name}"]')).to_contain_text(
                "up")

            async with resource_held(db, client.temporal, f"vm:{name}") as holder:
                task = await client.create_vm(CreateVmRequest(name=name, host=host.name,
                                                              start=True))
                waiting = page.locator(f'#active tr[data-task-id="{task.id}"]')
                await expect(waiting).to_have_attribute("data-state", "waiting",
                                                        timeout=WAIT_MS)
                await expect(waiting).to_contain_text(f"vm:{name} held by {holder}")
                await page.screenshot(path=tmp_path / "waiting.png", full_page=True)

            done = page.locator(f'#done tr[data-task-id="{task.id}"]')
            await expect(done).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
            await expect(waiting).to_have_count(0)
            await expect(page.locator(f'#vms tr[data-vm="{name}"]')).to_contain_text("running")
            link = await done.locator("a").get_attribute("href")
            assert link == (f"{settings.temporal_ui_url}/namespaces/"
                            f"{settings.temporal_namespace}/workflows/{task.id}")
            await page.screenshot(path=tmp_path / "complete.png", full_page=True)
        finally:
            await browser.close()
    shot = tmp_path / "complete.png"
    assert shot.stat().st_size > 0
    print(f"screenshot: {shot}")


async def test_a_refused_token_signs_the_page_out(client: TaskomaticClient, settings: Settings,
                                                  db: Database) -> None:
    async with served(create_app(settings, client, db)) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{url}/ui")
            await page.fill("#token", "not-a-token")
            await page.click("#sign-in")
            await expect(page.locator("#status")).to_have_text("token refused",
                                                                 timeout=WAIT_MS)
            await expect(page.locator("#board")).to_be_hidden()
        finally:
            await browser.close()
