"""The HTTP SMS backend against a real local HTTP peer standing in for the gateway."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.identity.sms import HttpSmsBackend, SmsDeliveryError


class _Gateway(BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)}
        )
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway():
    _Gateway.received = []
    _Gateway.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/sms/send"
    server.shutdown()
    server.server_close()


def test_http_backend_posts_the_message_with_its_token(gateway):
    _, url = gateway
    HttpSmsBackend(url=url, token="gw-secret").send(
        phone="13800000001", template="login_code", params={"code": "123456", "minutes": "5"}
    )
    assert _Gateway.received == [
        {
            "path": "/sms/send",
            "auth": "Bearer gw-secret",
            "body": {
                "phone": "13800000001",
                "template": "login_code",
                "params": {"code": "123456", "minutes": "5"},
            },
        }
    ]


def test_http_backend_reports_a_refusing_gateway(gateway):
    _, url = gateway
    _Gateway.status = 503
    with pytest.raises(SmsDeliveryError, match="503"):
        HttpSmsBackend(url=url).send(phone="13800000001", template="login_code", params={})


def test_http_backend_reports_an_unreachable_gateway(gateway):
    server, url = gateway
    server.shutdown()
    server.server_close()
    with pytest.raises(SmsDeliveryError, match="unreachable"):
        HttpSmsBackend(url=url).send(phone="13800000001", template="login_code", params={})
