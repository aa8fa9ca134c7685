"""The medical-insurance platform's outpatient settlement (PROTOCOL section 6): ``2207``
settles, ``2208`` reverses a settlement.

Yuan arrive as JSON numbers (parsed as ``Decimal``, at most two decimals) and leave as raw
JSON number tokens with exactly two decimals (``123.45``, ``-0.50``); everything in
between is integer fen. Business outcomes are HTTP 200 with ``infcode`` 0 or -1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from peers.payment.crypto import insurance_time, local_time, random_digits
from peers.payment.store import NewSettlement, Settlement, Store

UNINSURED_MESSAGE = "参保信息不存在"
INF_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
MAX_ID_LENGTH = 64


class InsuranceRefusal(Exception):
    """``infcode`` -1 with this ``err_msg``."""


# -- money on the wire ---------------------------------------------------------------


@dataclass(frozen=True)
class Yuan:
    """An amount in fen written as a yuan JSON number with exactly two decimals."""

    fen: int

    def token(self) -> str:
        sign = "-" if self.fen < 0 else ""
        return f"{sign}{abs(self.fen) // 100}.{abs(self.fen) % 100:02d}"


def dumps(value: Any) -> str:
    """Compact JSON in which :class:`Yuan` values are raw number tokens."""
    if isinstance(value, Yuan):
        return value.token()
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{dumps(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def fen_of(value: Any, name: str, *, allow_negative: bool = False) -> int:
    """A yuan JSON number (int or Decimal) with at most two decimals, in fen."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InsuranceRefusal(f"{name} 必须是数字（元）· must be a number of yuan")
    if isinstance(value, Decimal) and not value.is_finite():
        raise InsuranceRefusal(f"{name} 必须是有限数字 · must be finite")
    cents = Decimal(value) * 100
    if cents != cents.to_integral_value():
        raise InsuranceRefusal(f"{name} 最多两位小数 · at most two decimals")
    if cents < 0 and not allow_negative:
        raise InsuranceRefusal(f"{name} 不能为负 · must not be negative")
    return int(cents)


def _number(value: Any, name: str, *, positive: bool = False) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InsuranceRefusal(f"{name} 必须是数字 · must be a number")
    number = Decimal(value)
    if not number.is_finite() or number < 0 or (positive and number == 0):
        raise InsuranceRefusal(f"{name} 必须{'大于零' if positive else '非负'} · out of range")
    return number


def _text(data: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InsuranceRefusal(f"{key} 必须是非空字符串 · must be a non-empty string")
    if len(value) > 200:
        raise InsuranceRefusal(f"{key} 过长 · too long")
    return value


def _fixed(data: Mapping[str, Any], key: str, expected: str) -> None:
    if data.get(key) != expected:
        raise InsuranceRefusal(f"{key} 必须为 {expected} · must be {expected!r}")


# -- the coverage rule ---------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """fund = floor(total × fund_ratio); account = min(balance, floor((total − fund) ×
    account_ratio)); cash = the rest. ``account_balance`` (fen) is every person's starting
    balance; what their settlements not reversed took from it is subtracted."""

    fund_ratio: Decimal = Decimal("0.7")
    account_ratio: Decimal = Decimal("0.5")
    account_balance: int = 50_000
    uninsured: frozenset[str] = field(default_factory=frozenset)

    def split(self, total: int, balance: int) -> tuple[int, int, int]:
        fund = int((total * self.fund_ratio).to_integral_value(rounding=ROUND_FLOOR))
        share = int(((total - fund) * self.account_ratio).to_integral_value(rounding=ROUND_FLOOR))
        account = max(0, min(balance, share))
        return fund, account, total - fund - account

    def updated(self, data: Any) -> Coverage:
        """A copy with the keys given in ``data`` (a JSON object parsed with Decimal)."""
        if not isinstance(data, dict):
            raise ValueError("the coverage rule must be a JSON object")
        known = {"fund_ratio", "account_ratio", "account_balance", "uninsured"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown coverage key(s): {', '.join(unknown)}")
        changes: dict[str, Any] = {}
        for key in ("fund_ratio", "account_ratio"):
            if key in data:
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                    raise ValueError(f"{key} must be a number between 0 and 1")
                ratio = Decimal(str(value))
                if not ratio.is_finite() or not 0 <= ratio <= 1:
                    raise ValueError(f"{key} must be a number between 0 and 1")
                changes[key] = ratio
        if "account_balance" in data:
            balance = data["account_balance"]
            if isinstance(balance, bool) or not isinstance(balance, int) or balance < 0:
                raise ValueError("account_balance must be a non-negative integer of fen")
            changes["account_balance"] = balance
        if "uninsured" in data:
            uninsured = data["uninsured"]
            if not isinstance(uninsured, list) or not all(isinstance(x, str) for x in uninsured):
                raise ValueError("uninsured must be a list of certificate numbers")
            changes["uninsured"] = frozenset(uninsured)
        return Coverage(**{**self.__dict__, **changes})

    def describe(self) -> dict[str, Any]:
        return {
            "fund_ratio": float(self.fund_ratio),
            "account_ratio": float(self.account_ratio),
            "account_balance": self.account_balance,
            "uninsured": sorted(self.uninsured),
        }


# -- the call ------------------------------------------------------------------------


def person_number(cert_no: str) -> str:
    """A stable ``psn_no`` for a certificate number."""
    digest = hashlib.sha256(cert_no.encode()).hexdigest()
    return f"3300{int(digest[:16], 16) % 10**14:014d}"


def _new_id(prefix: str, now: float) -> str:
    return f"{prefix}{local_time(now):%Y%m%d%H%M%S}{random_digits(8)}"


def handle(
    store: Store, coverage: Coverage, paasid: str, message: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """The ``output`` of one call; raises :class:`InsuranceRefusal` for ``infcode`` -1."""
    infno = _text(message, "infno")
    for key in ("msgid", "fixmedins_code"):
        _text(message, key)
    for key in ("fixmedins_name", "opter", "opter_name"):
        if not isinstance(message.get(key), str):
            raise InsuranceRefusal(f"{key} 必须是字符串 · must be a string")
    _fixed(message, "infver", "V1.0")
    inf_time = message.get("inf_time")
    if not isinstance(inf_time, str) or not INF_TIME.fullmatch(inf_time):
        raise InsuranceRefusal("inf_time 格式应为 yyyy-MM-dd HH:mm:ss · bad inf_time")
    try:
        dt.datetime.strptime(inf_time, "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 - a local wall time
    except ValueError:
        raise InsuranceRefusal("inf_time 不是有效时间 · not a valid time") from None
    inputs = message.get("input")
    data = inputs.get("data") if isinstance(inputs, dict) else None
    if not isinstance(data, dict):
        raise InsuranceRefusal("input.data 必须是对象 · input.data must be an object")
    if infno == "2207":
        return settle(store, coverage, paasid, str(message["fixmedins_code"]), data, now)
    if infno == "2208":
        return reverse(store, paasid, data, now)
    raise InsuranceRefusal(f"不支持的交易编号 {infno} · unsupported infno")


def settle(
    store: Store,
    coverage: Coverage,
    paasid: str,
    fixmedins_code: str,
    data: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    _fixed(data, "mdtrt_cert_type", "02")
    cert_no = _text(data, "mdtrt_cert_no")
    psn_name = _text(data, "psn_name")
    ipt_otp_no = _text(data, "ipt_otp_no")
    if len(ipt_otp_no) > MAX_ID_LENGTH:
        raise InsuranceRefusal("ipt_otp_no 过长 · too long")
    total = fen_of(data.get("medfee_sumamt"), "medfee_sumamt")
    _fixed(data, "insutype", "310")
    _fixed(data, "med_type", "11")
    details = data.get("fee_details")
    if not isinstance(details, list) or not details:
        raise InsuranceRefusal("fee_details 必须是非空列表 · must be a non-empty list")
    serials: set[str] = set()
    details_sum = 0
    for index, detail in enumerate(details):
        if not isinstance(detail, dict):
            raise InsuranceRefusal(f"fee_details[{index}] 必须是对象 · must be an object")
        serial = _text(detail, "feedetl_sn")
        if serial in serials:
            raise InsuranceRefusal(f"费用明细流水号重复 {serial} · duplicate feedetl_sn")
        serials.add(serial)
        _text(detail, "medins_list_codg")
        _text(detail, "med_list_codg", required=False)
        _number(detail.get("pric"), f"fee_details[{index}].pric")
        _number(detail.get("cnt"), f"fee_details[{index}].cnt", positive=True)
        details_sum += fen_of(
            detail.get("det_item_fee_sumamt"), f"fee_details[{index}].det_item_fee_sumamt"
        )

    existing = store.settlement(paasid, ipt_otp_no=ipt_otp_no)
    if existing is not None:
        _same_settlement(existing, cert_no, total)
        return _settlement_output(existing)
    if details_sum != total:
        raise InsuranceRefusal(
            f"医疗费总额与明细之和不符 · medfee_sumamt {Yuan(total).token()} is not the sum of "
            f"the details {Yuan(details_sum).token()}"
        )
    if cert_no in coverage.uninsured:
        raise InsuranceRefusal(UNINSURED_MESSAGE)
    new = NewSettlement(
        paasid=paasid,
        ipt_otp_no=ipt_otp_no,
        setl_id=_new_id("SETL", now),
        mdtrt_id=_new_id("MDTRT", now),
        psn_no=person_number(cert_no),
        psn_name=psn_name,
        cert_no=cert_no,
        fixmedins_code=fixmedins_code,
        medfee=total,
        setl_time=insurance_time(now),
    )
    settlement, created = store.settle(
        new, account_balance=coverage.account_balance, split=coverage.split
    )
    if not created:
        _same_settlement(settlement, cert_no, total)
    return _settlement_output(settlement)


def _same_settlement(existing: Settlement, cert_no: str, total: int) -> None:
    if existing.cert_no != cert_no or existing.medfee != total:
        raise InsuranceRefusal(
            f"ipt_otp_no {existing.ipt_otp_no} 已用于另一笔结算 · already settled with a "
            "different certificate or total"
        )


def _settlement_output(s: Settlement) -> dict[str, Any]:
    return {
        "setlinfo": {
            "setl_id": s.setl_id,
            "mdtrt_id": s.mdtrt_id,
            "psn_no": s.psn_no,
            "psn_name": s.psn_name,
            "medfee_sumamt": Yuan(s.medfee),
            "fund_pay_sumamt": Yuan(s.fund),
            "acct_pay": Yuan(s.acct),
            "psn_cash_pay": Yuan(s.cash),
            "setl_time": s.setl_time,
        }
    }


def reverse(store: Store, paasid: str, data: Mapping[str, Any], now: float) -> dict[str, Any]:
    setl_id = _text(data, "setl_id")
    mdtrt_id = _text(data, "mdtrt_id")
    psn_no = _text(data, "psn_no")
    settlement = store.settlement(paasid, setl_id=setl_id)
    if settlement is None:
        raise InsuranceRefusal(f"结算信息不存在 {setl_id} · no such settlement")
    if settlement.mdtrt_id != mdtrt_id or settlement.psn_no != psn_no:
        raise InsuranceRefusal("就诊信息与结算不符 · mdtrt_id or psn_no does not match")
    reversed_ = store.reverse(
        settlement.seq, reversal_id=_new_id("RSETL", now), reversal_time=insurance_time(now)
    )
    return {
        "setlinfo": {
            "setl_id": reversed_.reversal_id,
            "medfee_sumamt": Yuan(-reversed_.medfee),
            "fund_pay_sumamt": Yuan(-reversed_.fund),
            "acct_pay": Yuan(-reversed_.acct),
            "psn_cash_pay": Yuan(-reversed_.cash),
        }
    }


def settlement_listing(s: Settlement) -> dict[str, Any]:
    return {
        "paasid": s.paasid,
        "ipt_otp_no": s.ipt_otp_no,
        "setl_id": s.setl_id,
        "mdtrt_id": s.mdtrt_id,
        "psn_no": s.psn_no,
        "psn_name": s.psn_name,
        "mdtrt_cert_no": s.cert_no,
        "fixmedins_code": s.fixmedins_code,
        "medfee_sumamt": Yuan(s.medfee),
        "fund_pay_sumamt": Yuan(s.fund),
        "acct_pay": Yuan(s.acct),
        "psn_cash_pay": Yuan(s.cash),
        "setl_time": s.setl_time,
        "reversal_setl_id": s.reversal_id,
        "reversal_time": s.reversal_time,
    }


def answer(
    *, infcode: int, err_msg: str, output: Mapping[str, Any], received: float, now: float
) -> bytes:
    return dumps(
        {
            "infcode": infcode,
            "inf_refmsgid": f"{local_time(received):%Y%m%d%H%M%S}{random_digits(16)}",
            "refmsg_time": insurance_time(received),
            "respond_time": insurance_time(now),
            "err_msg": err_msg,
            "output": output,
        }
    ).encode()
