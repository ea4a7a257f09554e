"""The admin endpoint's operator actions need the configured token; reads do not."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession, web

from switch.admin import admin_app
from switch.metrics import Metrics


def test_operator_actions_need_the_admin_token():
    async def scenario():
        app = admin_app(Metrics(), lambda: True, {}, token="s3cret-demo-token")
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            async with ClientSession() as http:
                refused = await http.post(f"{base}/channels/wechat/disable")
                wrong = await http.post(f"{base}/channels/wechat/disable", headers={"Authorization": "Bearer nope"})
                allowed = await http.post(
                    f"{base}/channels/wechat/disable", headers={"Authorization": "Bearer s3cret-demo-token"}
                )
                listed = await http.get(f"{base}/channels")
                assert (refused.status, wrong.status) == (401, 401)
                assert allowed.status == 404  # past the token check: there is no such channel here
                assert "no channel 'wechat'" in (await allowed.json())["error"]
                assert listed.status == 200 and await listed.json() == {}
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
