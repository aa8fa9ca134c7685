"""The HTTP answer that hands out a WebSocket ticket (CONTRACT section 1)."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from backend.identity.authentication import request_account
from backend.identity.services import ws_ticket_issue


class WsTicketOutput(serializers.Serializer):  # type: ignore[type-arg]
    ticket = serializers.CharField()
    url = serializers.CharField(help_text="The WebSocket URL with the ticket")
    expires_at = serializers.DateTimeField()


def ws_ticket_response(request: Request, *, path: str) -> Response:
    issued = ws_ticket_issue(user=request_account(request), path=path)
    scheme = "wss" if request.is_secure() else "ws"
    return Response(
        {
            "ticket": issued.ticket,
            "url": f"{scheme}://{request.get_host()}{issued.path}?ticket={issued.ticket}",
            "expires_at": issued.expires_at,
        },
        status=201,
    )
