"""``/ws/regulator/feed/?after=N``: every record the platform received from this
province's hospitals, live and in feed order, resumable like the chat (CONTRACT 7).

On connect the official joins the province's group first, then gets every record with
``feed_seq > after`` from the database; live frames already sent are dropped, and a gap
(a frame further ahead than the next number) is filled from the database, so a client
that reconnects with the last ``seq`` it saw gets everything after it exactly once."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from backend.audit.services import RequestMeta, audit_access
from backend.identity.models import Role
from backend.ws_auth import CLOSE_FORBIDDEN, CLOSE_NOT_AUTHENTICATED
from backend.ws_base import JsonConsumer
from regulators.selectors import feed_after
from regulators.services import feed_item, regulator_group

FEED_PAGE = 500


class RegulatorFeedConsumer(JsonConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_NOT_AUTHENTICATED)
            return
        province = await database_sync_to_async(self._province)(user)
        if user.role != Role.REGULATOR or province is None:
            await self.refuse(CLOSE_FORBIDDEN)
            return
        self.province = province
        try:
            after = int(self._query().get("after", "0") or 0)
        except ValueError:
            after = 0
        self.last_seq = max(after, 0)
        self.group = regulator_group(province.code)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "province": province.code, "after": after})
        await self._catch_up()

    def _query(self) -> dict[str, str]:
        raw = self.scope.get("query_string", b"").decode()
        pairs = (part.split("=", 1) for part in raw.split("&") if "=" in part)
        return dict(pairs)

    @staticmethod
    def _province(user: Any) -> Any:
        from backend.organisations.models import RegulatorOfficial

        official = RegulatorOfficial.objects.select_related("province").filter(user=user).first()
        return official.province if official else None

    async def _catch_up(self) -> None:
        while True:
            items = await database_sync_to_async(self._page)(self.last_seq)
            for item in items:
                await self._send_record(item)
            if len(items) < FEED_PAGE:
                return

    def _page(self, after: int) -> list[dict[str, Any]]:
        items = [
            feed_item(r) for r in feed_after(province=self.province, after=after, limit=FEED_PAGE)
        ]
        if items:  # the records an official read from the database (DOMAIN rule 12)
            audit_access(
                actor=self.scope["user"],
                object_type="regulator_record",
                object_id="",
                what="listed",
                after={"ids": [str(i["record_id"]) for i in items], "via": "websocket"},
                meta=RequestMeta.from_scope(self.scope),
            )
        return items

    async def _send_record(self, item: dict[str, Any]) -> None:
        seq = item["seq"]
        if seq is None or seq <= self.last_seq:
            return
        self.last_seq = seq
        await self.send_json({"type": "record", "record": item})

    async def disconnect(self, code: int) -> None:
        group = getattr(self, "group", None)
        if group:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def on_frame(self, frame: dict[str, Any]) -> None:
        await self.send_error("unknown_type", "The feed only sends; use ping to keep alive.")

    async def feed_push(self, event: dict[str, Any]) -> None:
        """A batch of acknowledged records, in feed order (``frames``; ``frame`` is one)."""
        frames = event.get("frames") or [event["frame"]]
        for frame in frames:
            item = frame["record"]
            seq = item.get("seq")
            if seq is None or seq <= self.last_seq:
                continue
            if seq > self.last_seq + 1:
                await self._catch_up()  # a frame was missed: the database has it
                continue
            await self._send_record(item)
