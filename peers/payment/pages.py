"""The payment peer's HTML: the pay page the patient's app opens (PROTOCOL section 5) and
the overview at ``/``. Small, self-contained pages: no scripts, no external assets, every
value escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable

from peers.payment.store import Transaction

STATE_TEXT = {
    "NOTPAY": "未支付 · Not paid",
    "SUCCESS": "支付成功 · Paid",
    "CLOSED": "已关闭 · Closed",
    "REFUND": "已退款 · Refunded",
}

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a;background:#f5f6f7}
main{max-width:28rem;margin:2rem auto;padding:1.5rem;background:#fff;border-radius:.5rem}
h1{font-size:1.4rem;margin:0 0 1rem}
dl{display:grid;grid-template-columns:auto 1fr;gap:.4rem 1rem;margin:0 0 1.5rem}
dt{color:#555}dd{margin:0;word-break:break-all}
.amount{font-size:1.6rem;font-weight:700}
button{width:100%;font-size:1.15rem;padding:.8rem;border:0;border-radius:.4rem;
background:#07823b;color:#fff;cursor:pointer}
button:focus-visible{outline:3px solid #0b4f9c;outline-offset:3px}
.status{padding:.8rem;border-radius:.4rem;background:#e8f5ec}
.status.closed{background:#fbeaea}
table{border-collapse:collapse;width:100%;font-size:.85rem;background:#fff}
th,td{border:1px solid #ccc;padding:.25rem .4rem;text-align:left;vertical-align:top}
th{background:#eee}
.wide{max-width:none;margin:1rem}
"""


def yuan_text(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _document(title: str, body: str, *, wide: bool = False) -> bytes:
    main_class = ' class="wide"' if wide else ""
    return (
        '<!doctype html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<main{main_class}>\n{body}\n</main>\n</body>\n</html>\n"
    ).encode()


def _details(transaction: Transaction) -> str:
    return (
        "<dl>\n"
        f"<dt>商户 Merchant</dt><dd>{_e(transaction.mchid)}</dd>\n"
        f"<dt>商品 Item</dt><dd>{_e(transaction.description)}</dd>\n"
        f"<dt>订单号 Order</dt><dd>{_e(transaction.out_trade_no)}</dd>\n"
        f'<dt>金额 Amount</dt><dd class="amount" id="amount">'
        f"¥{yuan_text(transaction.total)}</dd>\n"
        "</dl>"
    )


def pay_page(transaction: Transaction) -> bytes:
    """The order and a 支付 / Pay button, which POSTs to this same URL."""
    body = (
        "<h1>确认支付 · Confirm payment</h1>\n"
        f"{_details(transaction)}\n"
        '<form method="post">\n'
        '<button type="submit" id="pay" aria-describedby="amount">支付 / Pay</button>\n'
        "</form>"
    )
    return _document(f"支付 ¥{yuan_text(transaction.total)} · Pay", body)


def paid_page(transaction: Transaction) -> bytes:
    state = STATE_TEXT.get(transaction.trade_state, transaction.trade_state)
    body = (
        "<h1>支付成功 · Paid</h1>\n"
        f'<p class="status" role="status">{_e(state)} · '
        f"交易单号 Transaction {_e(transaction.transaction_id or '')}</p>\n"
        f"{_details(transaction)}"
    )
    return _document("支付成功 · Paid", body)


def closed_page(transaction: Transaction) -> bytes:
    body = (
        "<h1>订单已关闭 · Order closed</h1>\n"
        '<p class="status closed" role="alert">此订单已关闭，无法支付。'
        "This order is closed and cannot be paid.</p>\n"
        f"{_details(transaction)}"
    )
    return _document("订单已关闭 · Order closed", body)


def not_found_page() -> bytes:
    body = (
        "<h1>订单不存在 · No such order</h1>\n"
        "<p>这个支付链接无效。This payment link is not valid.</p>"
    )
    return _document("订单不存在 · No such order", body)


def index_page(transactions: Iterable[Transaction], summary: str) -> bytes:
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{_e(cell)}</td>"
            for cell in (
                t.created_at,
                t.mchid,
                t.out_trade_no,
                t.description,
                yuan_text(t.total),
                STATE_TEXT.get(t.trade_state, t.trade_state),
                t.transaction_id or "",
                t.success_time or "",
            )
        )
        + "</tr>"
        for t in transactions
    )
    body = (
        "<h1>支付网关 · 医保平台（模拟） <small>Payment gateway · insurance platform "
        "(peer)</small></h1>\n"
        f"<p>{_e(summary)}</p>\n"
        "<h2>最近交易 · Recent transactions</h2>\n"
        "<table>\n<thead><tr>"
        '<th scope="col">创建 Created</th><th scope="col">商户 Merchant</th>'
        '<th scope="col">订单号 Order</th><th scope="col">商品 Item</th>'
        '<th scope="col">金额（元）Amount (yuan)</th><th scope="col">状态 State</th>'
        '<th scope="col">交易单号 Transaction</th><th scope="col">支付时间 Paid at</th>'
        "</tr></thead>\n<tbody>\n"
        + (rows or '<tr><td colspan="8">（暂无 none yet）</td></tr>')
        + "\n</tbody>\n</table>"
    )
    return _document("支付网关（模拟）· Payment peer", body, wide=True)
