"""Prescription benchmark: signing, bundle verification and the five-step path.

Starts one Daphne process on PostgreSQL (and Redis) itself, seeds doctors, pharmacists,
patients and pharmacies with the ORM and the services in a set-up phase, then times only
HTTP, from this process, with real clients. One invocation prints:

* the raw ``cryptography`` sign and verify rates of the server's key type (the ceiling);
* ``prescriptions.verify.verify_bundle`` on bundles the server produced;
* a plain authenticated GET of a prescription beside the HTTP sign request;
* the path create → sign → approve → claim → dispense with N concurrent workers;
* 50 pharmacies claiming one prescription at once;

then the issue's targets as ratios with PASS/MISS, and a server-side profile of each
missed HTTP target. It exits 0 either way: it is a benchmark, not a test.

    python -m bench.rx_bench                      # full run, a few minutes
    python -m bench.rx_bench --quick              # smoke run, under a minute
    python -m bench.rx_bench --workers 1,4,16 --path-prescriptions 400 --profile path

Signing needs a console session whose second factor is done (API tokens are refused),
and a TOTP code is accepted once per 30-second step and user. So every signature in a
timed window has a doctor of its own, and every approval a pharmacist of its own. Their
sessions are written in the set-up phase, as ``django.contrib.auth.login`` would write
them; two more doctors sign in over HTTP (password, then TOTP) to check that path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import datetime as dt
import itertools
import json
import os
import pstats
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx

from bench.chat_bench import free_port, prepare_database

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = "/api/console/v1"
MOBILE = "/api/mobile/v1"
PHARMACY = "/api/pharmacy/v1"
PASSWORD = "rx-bench-password-9"
LINE = {
    "drug": "DEMO-0001",
    "dose": "5",
    "dose_unit": "mg",
    "frequency": "qd",
    "route": "口服",
    "days": 7,
    "quantity": 1,
}
DISPENSE = {
    "items": [{"line": 1, "quantity": 1, "batch_number": "B2026-1102"}],
    "pharmacist": {"name": "王药师", "licence_number": "YS330100123"},
}
PATH_STEPS = ("create", "sign", "approve", "code", "claim", "dispense")
DUMP_PATH = "/__rx_bench_profile/dump"
RESET_PATH = "/__rx_bench_profile/reset"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextmanager
def server(app: str, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """One Daphne process (as bench.chat_bench starts them), its output kept in ``log``."""
    port = free_port()
    with log.open("ab") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"server did not start; see {log}") from None
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def pct(data: list[float], q: float) -> float:
    if not data:
        return float("nan")
    ordered = sorted(data)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- CPU accounting (client, server and PostgreSQL share the machine's cores) ---------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds of the PostgreSQL backends connected to ``database``."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"postgres: ") and f" {database} ".encode() in cmdline:
            found[int(entry.name)] = cpu_seconds(int(entry.name))
    return found


@dataclass
class CpuMeter:
    server_pid: int
    database: str
    server: float = 0.0
    postgres: dict[int, float] = field(default_factory=dict)
    client: float = 0.0

    def start(self) -> None:
        self.server = cpu_seconds(self.server_pid)
        self.postgres = postgres_cpu(self.database)
        self.client = time.process_time()

    def stop(self) -> tuple[float, float, float]:
        """CPU seconds used since ``start``: server, PostgreSQL backends, this client."""
        after = postgres_cpu(self.database)
        pg = sum(v - self.postgres.get(pid, 0.0) for pid, v in after.items())
        return (
            cpu_seconds(self.server_pid) - self.server,
            pg,
            time.process_time() - self.client,
        )


# --- Set-up (runs in a subprocess with Django: python -m bench.rx_bench --seed SPEC) ---------


def _seed(spec: dict[str, int]) -> dict[str, Any]:
    """Doctors with a certificate and an accepted consultation each (with a draft for
    ``drafts``; with a pharmacist and a patient API token for ``items``), pharmacies with
    a staff API token, and console sessions whose second factor is done."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
    import django

    django.setup()

    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.hashers import make_password
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    from backend.identity.authentication import SESSION_VERIFIED
    from backend.identity.models import Role, User
    from backend.identity.services import api_token_create
    from backend.organisations.models import (
        Department,
        FilingStatus,
        Hospital,
        Pharmacy,
        PharmacyStaff,
        Practitioner,
        PractitionerKind,
        Province,
    )
    from backend.organisations.validators import uscc_check_character
    from backend.patients.models import PatientProfile
    from backend.pki.services import authority_create, certificate_issue
    from consultations.models import PriorDiagnosis
    from consultations.services import consultation_accept, consultation_request
    from prescriptions.catalogue import drug_catalogue_import_file
    from prescriptions.demo_seed import CATALOGUE
    from prescriptions.models import Drug
    from prescriptions.services import prescription_create

    if not Drug.objects.filter(code=LINE["drug"]).exists():
        report = drug_catalogue_import_file(path=CATALOGUE)
        if not report.ok:
            raise SystemExit(f"catalogue import failed: {report.errors}")
    now = timezone.now()
    tag = uuid.uuid4().hex[:6]
    province, _ = Province.objects.get_or_create(
        code="990000", defaults={"name": "Bench", "regulator_name": "Bench regulator"}
    )
    first17 = f"12990000{uuid.uuid4().int % 10**9:09d}"
    hospital = Hospital.objects.create(
        name=f"处方基准医院{tag}",
        province=province,
        unified_social_credit_code=first17 + uscc_check_character(first17),
        practice_licence_number=f"RX{tag}",
        practice_licence_valid_until=dt.date(2040, 1, 1),
    )
    department = Department.objects.create(hospital=hospital, code="RX1", name="心内科")
    authority_create(hospital=hospital)
    password = make_password(PASSWORD)  # the server's hasher, computed once for everyone
    engine = import_module(settings.SESSION_ENGINE)
    serial = itertools.count()

    def users(prefix: str, role: str, n: int, totp: bool) -> list[User]:
        return User.objects.bulk_create(
            [
                User(
                    username=f"rx{tag}-{prefix}{i}",
                    role=role,
                    display_name=f"{prefix}{i}",
                    password=password,
                    totp_secret=(
                        base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")
                        if totp
                        else None
                    ),
                    totp_confirmed_at=now if totp else None,
                )
                for i in (next(serial) for _ in range(n))
            ]
        )

    def practitioners(accounts: list[User], kind: str, on_duty: int) -> list[Practitioner]:
        doctor = kind == PractitionerKind.DOCTOR
        made = Practitioner.objects.bulk_create(
            [
                Practitioner(
                    user=u,
                    kind=kind,
                    hospital=hospital,
                    department=department if doctor else None,
                    practice_certificate_number=f"RX{tag}{u.username.rpartition('-')[2]}",
                    qualification_certificate_number=f"Q{tag}{u.username.rpartition('-')[2]}",
                    title="主治医师" if doctor else "主管药师",
                    practice_start_date=dt.date(2010, 1, 1),
                    filing_status=FilingStatus.FILED,
                    licence_valid_until=dt.date(2040, 1, 1),
                    on_duty=i < on_duty,
                    last_identity_check_at=now,
                )
                for i, u in enumerate(accounts)
            ]
        )
        for p in made:
            certificate_issue(practitioner=p)
        return made

    def session(user: User) -> dict[str, str]:
        store = engine.SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store[SESSION_VERIFIED] = True
        store.create()
        return {
            "username": user.username,
            "secret": str(user.totp_secret),
            "session": str(store.session_key),
            "csrf": get_random_string(32),
        }

    def consultations(doctors: list[Practitioner]) -> list[tuple[str, str]]:
        """An accepted consultation per doctor; returns (consultation id, patient token)."""
        n = len(doctors)
        patients = users("p", Role.PATIENT, n, totp=False)
        profiles = [
            PatientProfile(
                account=p,
                real_name="测试患者",
                id_type="passport",
                id_number=f"RX{tag}{p.username.rpartition('-')[2]}",
                birth_date=dt.date(1970, 1, 1),
                sex="male",
                sensitive_data_consent_at=now,
            )
            for i, p in enumerate(patients)
        ]
        for profile in profiles:  # bulk_create skips pre_save: fill the blind index here
            profile.id_number_index = (
                type(profile)._meta.get_field("id_number_index").pre_save(profile, True)
            )
        PatientProfile.objects.bulk_create(profiles)
        records = PriorDiagnosis.objects.bulk_create(
            [
                PriorDiagnosis(
                    profile=pr,
                    institution="基准医院",
                    diagnosed_on=dt.date(2024, 1, 1),
                    icd10_code="I10",
                    icd10_name="原发性高血压",
                    created_by=pr.account,
                )
                for pr in profiles
            ]
        )
        out = []
        for patient, profile, record, doctor in zip(
            patients, profiles, records, doctors, strict=True
        ):
            consultation = consultation_request(
                account=patient,
                profile=profile,
                department=department,
                doctor=doctor,
                prior_diagnosis=record,
            )
            consultation_accept(
                consultation_id=consultation.pk, user=doctor.user, follow_up_confirmed=True
            )
            out.append((str(consultation.pk), api_token_create(user=patient, name="rx").key))
        return out

    # Drafts (for GET-vs-sign) and doctors who sign in over HTTP.
    n_drafts, n_login = spec["drafts"], spec["login"]
    doctors = practitioners(
        users("d", Role.DOCTOR, n_drafts + n_login, totp=True), PractitionerKind.DOCTOR, 10**9
    )
    drafts: list[dict[str, Any]] = []
    login: list[dict[str, str]] = []
    for doctor, (consultation, _) in zip(doctors, consultations(doctors), strict=True):
        draft = prescription_create(user=doctor.user, consultation_id=consultation, lines=[LINE])
        prescription = str(draft.prescription.pk)
        if len(drafts) < n_drafts:
            drafts.append({"doctor": session(doctor.user), "prescription": prescription})
        else:
            login.append(
                {
                    "username": doctor.user.username,
                    "password": PASSWORD,
                    "secret": str(doctor.user.totp_secret),
                    "prescription": prescription,
                }
            )

    # Path items: a doctor, a pharmacist (two of them on duty), a patient, a consultation.
    n_items = spec["items"]
    doctors = practitioners(
        users("pd", Role.DOCTOR, n_items, totp=True), PractitionerKind.DOCTOR, 10**9
    )
    pharmacists = practitioners(
        users("ph", Role.PHARMACIST, n_items, totp=True), PractitionerKind.PHARMACIST, 2
    )
    items = [
        {
            "doctor": session(doctor.user),
            "pharmacist": session(pharmacist.user),
            "consultation": consultation,
            "patient": patient_token,
        }
        for doctor, pharmacist, (consultation, patient_token) in zip(
            doctors, pharmacists, consultations(doctors), strict=True
        )
    ]

    n_pharmacies = spec["pharmacies"]
    pharmacies = Pharmacy.objects.bulk_create(
        [
            Pharmacy(code=f"RX{tag}{i:03d}", name=f"基准药房{i}", province=province)
            for i in range(n_pharmacies)
        ]
    )
    staff = users("s", Role.PHARMACY_STAFF, n_pharmacies, totp=False)
    PharmacyStaff.objects.bulk_create(
        [
            PharmacyStaff(user=u, pharmacy=p, is_licensed_pharmacist=True)
            for u, p in zip(staff, pharmacies, strict=True)
        ]
    )
    tokens = [api_token_create(user=u, name="rx").key for u in staff]
    return {
        "cookies": {"session": settings.SESSION_COOKIE_NAME, "csrf": settings.CSRF_COOKIE_NAME},
        "drafts": drafts,
        "login": login,
        "items": items,
        "pharmacies": tokens,
    }


def seed(env: dict[str, str], spec: dict[str, int]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.rx_bench", "--seed", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    plan: dict[str, Any] = json.loads(out.stdout)
    return plan


# --- Profiled server (daphne bench.rx_bench:profiled_application, only for --profile) --------

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


#: The profiler of the request being served, seen by the request's Django thread.
_PROFILE: ContextVar[cProfile.Profile | None] = ContextVar("rx_bench_profile", default=None)


def _profile_on(**kwargs: Any) -> None:
    profile = _PROFILE.get()
    if profile is not None:
        profile.enable()


def _profile_off(**kwargs: Any) -> None:
    profile = _PROFILE.get()
    if profile is not None:
        profile.disable()


class ProfiledApplication:
    """The project's ASGI application with cProfile on in the thread that runs Django for
    each request, merged per route. (The event loop thread only parses HTTP and waits.)
    The project's handler picks that thread itself (``backend.http_threads``); Django's
    request_started and request_finished signals are sent there, so they switch the
    request's profiler on and off."""

    def __init__(self) -> None:
        self.app: Any = None
        self.stats: dict[str, pstats.Stats] = {}
        self.counts: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.app is None:
            from django.core.signals import request_finished, request_started

            from backend.asgi import application

            request_started.connect(_profile_on, weak=False)
            request_finished.connect(_profile_off, weak=False)
            self.app = application
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == DUMP_PATH:
            await self.dump(send)
            return
        if scope["path"] == RESET_PATH:  # after the warm-up requests
            self.stats.clear()
            self.counts.clear()
            await self.answer(send, b"{}")
            return
        key = f"{scope['method']} {_UUID.sub('{id}', scope['path'])}"
        # "cpu": the request thread's CPU time, without the waits for the database.
        cpu = os.environ.get("RX_BENCH_PROFILE_CLOCK") == "cpu"
        profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
        token = _PROFILE.set(profile)
        try:
            await self.app(scope, receive, send)
        finally:
            _PROFILE.reset(token)
        profile.create_stats()
        if key in self.stats:
            self.stats[key].add(profile)
        else:
            self.stats[key] = pstats.Stats(profile)
        self.counts[key] += 1

    async def dump(self, send: Any) -> None:
        folder = Path(os.environ["RX_BENCH_PROFILE_DIR"])
        index: dict[str, dict[str, Any]] = {}
        for n, (key, stats) in enumerate(self.stats.items()):
            name = re.sub(r"[^a-z]+", "-", key.lower()).strip("-")
            stats.dump_stats(folder / f"{n:02d}-{name}.prof")
            index[key] = {"file": f"{n:02d}-{name}.prof", "requests": self.counts[key]}
        await self.answer(send, json.dumps(index).encode())

    async def answer(self, send: Any, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


profiled_application = ProfiledApplication()


#: The request's worker thread waiting for its next piece of sync work (the async side
#: of the handler runs meanwhile): not a cost of the view.
IDLE = "<method 'get' of '_queue.SimpleQueue' objects>"


def profile_report(stats: pstats.Stats, requests: int, top: int) -> list[str]:
    """Top functions by own time, then the project's functions by cumulative time, in ms
    per request (cProfile's overhead inflates the absolute figures; compare the shares)."""
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = vars(stats)["stats"]
    n = max(1, requests)
    idle = sum(v[2] for k, v in raw.items() if k[2] == IDLE) * 1000 / n
    total = sum(v[2] for k, v in raw.items() if k[2] != IDLE) * 1000 / n
    queries = (
        sum(
            v[1] for k, v in raw.items() if k[0].endswith("psycopg/cursor.py") and k[2] == "execute"
        )
        / n
    )

    def where(k: tuple[str, int, str]) -> str:
        file, line, func = k
        for base in (str(ROOT / ".venv/lib/python3.11/site-packages") + "/", str(ROOT) + "/"):
            file = file.removeprefix(base)
        return f"{file}:{line}({func})" if line else func

    def row(k: tuple[str, int, str], v: tuple[int, int, float, float, Any]) -> str:
        return f"      {v[2] * 1000 / n:8.2f} {v[3] * 1000 / n:8.2f} {v[1] / n:8.1f}  {where(k)}"

    lines = [
        f"    {requests} request(s): {total:.1f} ms profiled per request, {queries:.1f} SQL "
        f"statements per request ({idle:.1f} ms idle between sync calls not counted)",
        "      self ms   cum ms  calls/rq  function (top by own time)",
    ]
    ranked = sorted(
        ((k, v) for k, v in raw.items() if k[2] != IDLE), key=lambda kv: kv[1][2], reverse=True
    )
    lines += [row(k, v) for k, v in ranked[:top]]
    lines.append("      self ms   cum ms  calls/rq  project function (top by cumulative time)")
    own = [
        (k, v)
        for k, v in raw.items()
        if k[0].startswith(str(ROOT)) and "/.venv/" not in k[0] and "/bench/" not in k[0]
    ]
    lines += [row(k, v) for k, v in sorted(own, key=lambda kv: kv[1][3], reverse=True)[:top]]
    return lines


# --- Clients ----------------------------------------------------------------------------------


class StepError(Exception):
    pass


@dataclass
class Recorder:
    ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)
    #: With a server pid and one request at a time: the server's CPU ms per request
    #: (/proc ticks are 10 ms, so only the mean of many is meaningful).
    server_pid: int = 0
    cpu_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    async def call(
        self,
        client: httpx.AsyncClient,
        step: str,
        method: str,
        url: str,
        *,
        expect: int = 200,
        **kwargs: Any,
    ) -> httpx.Response:
        cpu = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        start = time.perf_counter()
        response = await client.request(method, url, **kwargs)
        elapsed = (time.perf_counter() - start) * 1000
        if self.server_pid:
            self.cpu_ms[step].append((cpu_seconds(self.server_pid) - cpu) * 1000)
        if response.status_code != expect:
            self.errors[step] += 1
            self.first_errors.setdefault(step, f"{response.status_code} {response.text[:300]}")
            raise StepError(step)
        self.ms[step].append(elapsed)
        return response


def http_client(base: str, connections: int) -> httpx.AsyncClient:
    """A pooled client that keeps no cookies: each request names its own session."""
    return httpx.AsyncClient(
        base_url=base,
        timeout=60,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def otp(secret: str, steps: int = 0) -> str:
    """The authenticator's code now (or ``steps`` 30-second steps away)."""
    from backend.identity.services import totp_code_at

    return totp_code_at(
        secret=secret, when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30 * steps)
    )


@dataclass
class Plan:
    cookies: dict[str, str]
    drafts: list[dict[str, Any]]
    login: list[dict[str, Any]]
    items: list[dict[str, Any]]
    pharmacies: list[str]

    def console(self, user: dict[str, str]) -> dict[str, str]:
        return {
            "Cookie": f"{self.cookies['session']}={user['session']}; "
            f"{self.cookies['csrf']}={user['csrf']}",
            "X-CSRFToken": user["csrf"],
        }


def token(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


async def sign_phase(
    base: str, plan: Plan, drafts: list[dict[str, Any]], warm: int, server_pid: int = 0
) -> Recorder:
    """Sequential: GET the draft, sign it, GET it signed (one doctor per signature)."""
    kept = Recorder(server_pid=server_pid)
    async with http_client(base, 4) as client:
        for n, draft in enumerate(drafts):
            rec = kept if n >= warm else Recorder()
            headers = plan.console(draft["doctor"])
            url = f"{CONSOLE}/prescriptions/{draft['prescription']}"
            try:
                await rec.call(client, "GET draft", "GET", url, headers=headers)
                signed = await rec.call(
                    client,
                    "POST sign",
                    "POST",
                    f"{url}/sign",
                    headers=headers,
                    json={"otp": otp(draft["doctor"]["secret"])},
                )
                if signed.json()["status"] != "under_review":
                    raise StepError("sign: not under review")
                await rec.call(client, "GET signed", "GET", url, headers=headers)
            except StepError:
                continue
    return kept


async def login_check(base: str, plan: Plan) -> list[str]:
    """Doctors sign in as a browser would (CSRF cookie, password, TOTP of the previous
    step), sign with the current step's code, and see that code refused a second time."""
    notes = []
    for user in plan.login:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            csrf = (await client.get(f"{CONSOLE}/auth/csrf")).json()["csrf_token"]
            start = time.perf_counter()
            login = await client.post(
                f"{CONSOLE}/auth/login",
                json={"username": user["username"], "password": user["password"]},
                headers={"X-CSRFToken": csrf},
            )
            totp = await client.post(
                f"{CONSOLE}/auth/totp",
                json={"code": otp(user["secret"], -1)},
                headers={"X-CSRFToken": csrf},
            )
            login_ms = (time.perf_counter() - start) * 1000
            csrf = client.cookies[plan.cookies["csrf"]]
            code = otp(user["secret"])
            url = f"{CONSOLE}/prescriptions/{user['prescription']}/sign"
            signed = await client.post(url, json={"otp": code}, headers={"X-CSRFToken": csrf})
            replay = await client.post(url, json={"otp": code}, headers={"X-CSRFToken": csrf})
            ok = (
                login.status_code == 200
                and totp.status_code == 200
                and signed.status_code == 200
                and signed.json().get("status") == "under_review"
                and replay.json().get("code") == "totp_invalid"
            )
            notes.append(
                f"{user['username']}: login {login.status_code} + totp {totp.status_code} "
                f"in {login_ms:.0f} ms, sign {signed.status_code}, replayed code "
                f"{replay.status_code} {replay.json().get('code')} -> {'OK' if ok else 'FAILED'}"
            )
    return notes


async def one_path(
    client: httpx.AsyncClient, rec: Recorder, plan: Plan, item: dict[str, Any], pharmacy: str
) -> str:
    """create → sign → approve → (the patient's code) → claim → dispense; returns the id."""
    start = time.perf_counter()
    doctor, pharmacist = plan.console(item["doctor"]), plan.console(item["pharmacist"])
    created = await rec.call(
        client,
        "create",
        "POST",
        f"{CONSOLE}/prescriptions",
        expect=201,
        headers=doctor,
        json={"consultation": item["consultation"], "lines": [LINE]},
    )
    pid = created.json()["id"]
    url = f"{CONSOLE}/prescriptions/{pid}"
    await rec.call(
        client,
        "sign",
        "POST",
        f"{url}/sign",
        headers=doctor,
        json={"otp": otp(item["doctor"]["secret"])},
    )
    approved = await rec.call(
        client,
        "approve",
        "POST",
        f"{url}/approve",
        headers=pharmacist,
        json={"otp": otp(item["pharmacist"]["secret"])},
    )
    if approved.json()["status"] != "active":
        raise StepError("approve: not active")
    code = (
        await rec.call(
            client, "code", "GET", f"{MOBILE}/prescriptions/{pid}", headers=token(item["patient"])
        )
    ).json()["access_code"]
    claim = await rec.call(
        client,
        "claim",
        "POST",
        f"{PHARMACY}/prescriptions/claim",
        headers=token(pharmacy),
        json={"prescription_id": pid, "access_code": code},
    )
    dispensed = await rec.call(
        client,
        "dispense",
        "POST",
        f"{PHARMACY}/prescriptions/{pid}/dispense",
        headers=token(pharmacy),
        json={"claim_secret": claim.json()["claim_secret"], **DISPENSE},
    )
    if dispensed.json()["status"] != "dispensed":
        raise StepError("dispense: not dispensed")
    rec.ms["path"].append((time.perf_counter() - start) * 1000)
    return str(pid)


@dataclass
class PathResult:
    workers: int
    done: list[tuple[str, str]]  # (prescription id, pharmacy token)
    seconds: float
    cpu: tuple[float, float, float]
    rec: Recorder

    @property
    def rate(self) -> float:
        return len(self.done) / self.seconds if self.seconds else 0.0


async def path_phase(
    base: str,
    plan: Plan,
    items: list[dict[str, Any]],
    workers: int,
    meter: CpuMeter | None,
) -> PathResult:
    queue = list(reversed(items))
    rec = Recorder()
    done: list[tuple[str, str]] = []
    async with http_client(base, workers + 4) as client:

        async def worker(k: int) -> None:
            pharmacy = plan.pharmacies[k % len(plan.pharmacies)]
            while queue:
                item = queue.pop()
                try:
                    done.append((await one_path(client, rec, plan, item, pharmacy), pharmacy))
                except StepError:
                    continue

        if meter:
            meter.start()
        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(workers)))
        seconds = time.perf_counter() - start
        cpu = meter.stop() if meter else (0.0, 0.0, 0.0)
    return PathResult(workers, done, seconds, cpu, rec)


@dataclass
class ClaimRound:
    seconds: float
    winners: int
    outcomes: Counter[str]
    latencies_ms: list[float]
    cpu: tuple[float, float, float]


async def claims_phase(
    base: str,
    plan: Plan,
    items: list[dict[str, Any]],
    claimants: list[str],
    meter: CpuMeter | None = None,
) -> list[ClaimRound]:
    """Per round: an active prescription (made through HTTP, untimed), every claimant's
    connection opened, then all claims at once; the wall time is first send to last
    answer."""
    rounds = []
    async with http_client(base, len(claimants) + 8) as client:
        for item in items:
            rec = Recorder()
            doctor, pharmacist = plan.console(item["doctor"]), plan.console(item["pharmacist"])
            created = await rec.call(
                client,
                "create",
                "POST",
                f"{CONSOLE}/prescriptions",
                expect=201,
                headers=doctor,
                json={"consultation": item["consultation"], "lines": [LINE]},
            )
            pid = created.json()["id"]
            url = f"{CONSOLE}/prescriptions/{pid}"
            await rec.call(
                client,
                "sign",
                "POST",
                f"{url}/sign",
                headers=doctor,
                json={"otp": otp(item["doctor"]["secret"])},
            )
            await rec.call(
                client,
                "approve",
                "POST",
                f"{url}/approve",
                headers=pharmacist,
                json={"otp": otp(item["pharmacist"]["secret"])},
            )
            code = (
                await rec.call(
                    client,
                    "code",
                    "GET",
                    f"{MOBILE}/prescriptions/{pid}",
                    headers=token(item["patient"]),
                )
            ).json()["access_code"]
            await asyncio.gather(*(client.get("/healthz") for _ in claimants))

            async def claim(key: str, pid: str, code: str) -> tuple[str, float]:
                start = time.perf_counter()
                response = await client.post(
                    f"{PHARMACY}/prescriptions/claim",
                    headers=token(key),
                    json={"prescription_id": pid, "access_code": code},
                )
                elapsed = (time.perf_counter() - start) * 1000
                outcome = str(response.status_code)
                if response.status_code != 200:
                    outcome += f" {response.json().get('code')}"
                return outcome, elapsed

            if meter:
                meter.start()
            start = time.perf_counter()
            results = await asyncio.gather(*(claim(k, pid, code) for k in claimants))
            seconds = time.perf_counter() - start
            cpu = meter.stop() if meter else (0.0, 0.0, 0.0)
            outcomes = Counter(o for o, _ in results)
            latencies = [ms for _, ms in results]
            rounds.append(ClaimRound(seconds, outcomes["200"], outcomes, latencies, cpu))
    return rounds


async def fetch_bundles(base: str, done: list[tuple[str, str]]) -> list[dict[str, Any]]:
    async with http_client(base, 8) as client:
        bundles = []
        for pid, pharmacy in done:
            response = await client.get(
                f"{PHARMACY}/prescriptions/{pid}/bundle", headers=token(pharmacy)
            )
            if response.status_code == 200:
                bundles.append(response.json())
        return bundles


# --- In-process cryptography ------------------------------------------------------------------


def rate(fn: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn()
        count += 100
    return count / (time.perf_counter() - start)


def raw_primitives(
    algorithm: str, data: bytes
) -> tuple[Callable[[], object], Callable[[], object]]:
    """One sign and one verify of the bare ``cryptography`` primitive over ``data``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if algorithm == "ed25519":
        ed = ed25519.Ed25519PrivateKey.generate()
        ed_public = ed.public_key()
        ed_signature = ed.sign(data)

        def sign() -> object:
            return ed.sign(data)

        def verify() -> object:
            ed_public.verify(ed_signature, data)
            return None

    else:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        ecdsa = ec.ECDSA(hashes.SHA256())
        signature = key.sign(data, ecdsa)

        def sign() -> object:
            return key.sign(data, ecdsa)

        def verify() -> object:
            public.verify(signature, data, ecdsa)
            return None

    return sign, verify


def crypto_rates(
    algorithm: str, data: bytes, bundles: list[dict[str, Any]], seconds: float, repeats: int
) -> dict[str, float]:
    """Raw sign/s and verify/s and verify_bundle's bundles/s (warm and cold caches), each
    the best of ``repeats`` runs. The runs of each kind take turns, so that other work on
    the machine, or its speed drifting, during the measurement skews no side of a ratio
    more than the other."""
    sign, verify = raw_primitives(algorithm, data)
    best = dict.fromkeys(("sign", "verify", "warm", "cold"), 0.0)
    for _ in range(repeats):
        best["sign"] = max(best["sign"], rate(sign, seconds))
        best["verify"] = max(best["verify"], rate(verify, seconds))
        if bundles:
            for kind in ("warm", "cold"):
                value = bundle_rate(bundles, seconds * 2, cold=kind == "cold")
                best[kind] = max(best[kind], value)
    return best


def clear_verify_caches() -> None:
    """Every cache of the verifier: what it read from certificates and the CRL too."""
    from prescriptions import verify

    for value in vars(verify).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def bundle_rate(bundles: list[dict[str, Any]], seconds: float, cold: bool) -> float:
    """verify_bundle as a pharmacy calls it: root pinned, review required. ``cold``
    empties the certificate, chain and CRL caches before every bundle."""
    from prescriptions.verify import verify_bundle

    roots = {b["root_sha256"] for b in bundles}
    for b in bundles:  # every bundle is genuine; warms the caches
        verify_bundle(b, trusted_roots=roots, require_review=True)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for b in bundles:
            if cold:
                clear_verify_caches()
            verify_bundle(b, trusted_roots=roots, require_review=True)
        count += len(bundles)
    return count / (time.perf_counter() - start)


def verify_profile(bundles: list[dict[str, Any]], top: int) -> list[str]:
    from prescriptions.verify import verify_bundle

    roots = {b["root_sha256"] for b in bundles}
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20):
        for b in bundles:
            verify_bundle(b, trusted_roots=roots, require_review=True)
    profile.disable()
    profile.create_stats()
    return profile_report(pstats.Stats(profile), 20 * len(bundles), top)


# --- Run ---------------------------------------------------------------------------------------


@dataclass
class Sizes:
    warm: int
    signs: int
    workers: list[int]
    path: int
    rounds: int
    claimants: int
    profile_signs: int
    profile_path: int
    bundles: int
    crypto_seconds: float
    crypto_repeats: int


def sizes(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    return Sizes(
        warm=3 if quick else 5,
        signs=args.signs or (20 if quick else 100),
        workers=[int(w) for w in (args.workers or ("4" if quick else "1,4,16")).split(",")],
        path=args.path_prescriptions or (24 if quick else 80),
        rounds=args.claim_rounds or (2 if quick else 5),
        claimants=args.claimants,
        profile_signs=8 if quick else 25,
        profile_path=6 if quick else 25,
        bundles=40 if quick else 100,
        crypto_seconds=0.3 if quick else 1.0,
        crypto_repeats=2 if quick else 3,
    )


def bench_env(args: argparse.Namespace, var_dir: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}
    }
    prefix = f"rxbench{uuid.uuid4().hex[:6]}"
    env.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")  # a variant can be benched
    env.update(
        DEMO_MODE="1",
        VAR_DIR=var_dir,
        LOG_LEVEL="WARNING",
        CHANNEL_LAYER_PREFIX=prefix,
        CACHE_KEY_PREFIX=prefix,
        DATABASE_URL=args.database_url,
    )
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    return env


def redis_cleanup(url: str, prefix: str) -> None:
    """Remove this run's cache keys and the push tasks queued for a worker nobody runs."""
    if not url:
        return
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.delete("celery", "_kombu.binding.celery", "_kombu.binding_permanent.celery")


def line(label: str, values: list[float], unit: str = "ms") -> str:
    return (
        f"  {label:<26} n={len(values):<5} p50={pct(values, 0.5):7.1f} {unit}  "
        f"p95={pct(values, 0.95):7.1f} {unit}  max={max(values, default=float('nan')):7.1f} {unit}"
    )


def report_server_errors(log: Path) -> None:
    """Failed requests: the exception lines of the server's tracebacks, counted."""
    text = log.read_text(errors="replace") if log.exists() else ""
    errors = text.count("Traceback (most recent call last)")
    if not errors:
        return
    failed = text.count("unhandled error")
    kinds = Counter(
        re.sub(r"tuple \(\d+,\d+\)", "a tuple", m.group(0))
        for m in re.finditer(
            r"^(?:[a-z_]+\.)+[A-Za-z]+(?:Error|Exception|Detected): .*$|^CONTEXT: .*$", text, re.M
        )
    )
    print(f"\n[server log: {failed} request(s) failed with 500, {errors} traceback(s), in {log}]")
    for kind, count in kinds.most_common(8):
        print(f"  {count:5d}  {kind[:150]}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def profiled(
    env: dict[str, str],
    kind: str,
    plan: Plan,
    work: list[dict[str, Any]],
    claimants: list[str],
    top: int,
    log: Path,
    keep: str,
    clock: str = "wall",
) -> list[str]:
    """Run ``kind`` (sign: drafts; path, claims: items) again against a profiled server,
    sequentially; the first two drafts or items (one claim round) warm it up and are not
    counted. Reports the server-side costs per route."""
    warm = 1 if kind == "claims" else 2
    with tempfile.TemporaryDirectory(prefix="rx-profile-") as temporary:
        folder = str(Path(keep) / kind) if keep else temporary
        Path(folder).mkdir(parents=True, exist_ok=True)
        penv = {**env, "RX_BENCH_PROFILE_DIR": folder, "RX_BENCH_PROFILE_CLOCK": clock}
        with server("bench.rx_bench:profiled_application", penv, log) as (base, _):
            httpx.get(f"{base}/healthz", timeout=30)
            for n, part in enumerate((work[:warm], work[warm:])):
                if n:
                    httpx.get(f"{base}{RESET_PATH}", timeout=30)
                if kind == "sign":
                    asyncio.run(sign_phase(base, plan, part, 0))
                elif kind == "path":
                    asyncio.run(path_phase(base, plan, part, 1, None))
                else:
                    asyncio.run(claims_phase(base, plan, part, claimants))
            index = httpx.get(f"{base}{DUMP_PATH}", timeout=60).json()
        wanted = {
            "sign": ("/sign", "prescriptions/{id}"),
            "path": ("prescriptions", "/sign", "/approve", "/claim", "/dispense"),
            "claims": ("/claim",),
        }[kind]
        out = []
        for key, entry in index.items():
            if not any(w in key for w in wanted):
                continue
            out.append(f"  [{key}]")
            stats = pstats.Stats(str(Path(folder) / entry["file"]))
            out += profile_report(stats, entry["requests"], top)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_RX_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ih_bench_rx"
        ),
        help="PostgreSQL database, dropped and re-created",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_RX_REDIS_URL", "redis://127.0.0.1:6379/14"),
        help="Redis for cache, channel layer and broker ('' for in-process)",
    )
    parser.add_argument("--signs", type=int, default=0, help="sequential sign samples")
    parser.add_argument("--workers", default="", help="concurrent path workers, e.g. 4,16")
    parser.add_argument(
        "--path-prescriptions", type=int, default=0, help="prescriptions per --workers level"
    )
    parser.add_argument("--claim-rounds", type=int, default=0)
    parser.add_argument("--claimants", type=int, default=50)
    parser.add_argument(
        "--profile",
        default="",
        help="auto (each missed target; the default), all, none (the default with --quick), "
        "or a list of sign,path,claims,verify",
    )
    parser.add_argument("--top", type=int, default=14, help="rows per profile table")
    parser.add_argument(
        "--profile-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the server-side profile times: wall time, or the request thread's CPU",
    )
    parser.add_argument("--server-log", default="", help="keep the servers' output here")
    parser.add_argument("--profile-dir", default="", help="keep the .prof files here")
    parser.add_argument("--save-bundles", default="", help="write the fetched bundles (JSON)")
    args = parser.parse_args()
    if args.seed:
        json.dump(_seed(json.loads(args.seed)), sys.stdout)
        return

    size = sizes(args)
    args.profile = args.profile or ("none" if args.quick else "auto")
    every = {"sign", "path", "claims", "verify"}
    profile_kinds = (
        set()
        if args.profile == "none"
        else every
        if args.profile in ("auto", "all")
        else set(args.profile.split(","))
    )
    run_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ih-bench-rx-") as var_dir:
        env = bench_env(args, var_dir)
        log = Path(args.server_log or Path(var_dir) / "server.log")
        os.environ.update(env)  # this process computes TOTP codes with the project's code
        import django

        django.setup()
        from django.conf import settings

        algorithm = settings.SIGNING_ALGORITHM
        database = args.database_url.rpartition("/")[2]
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        print(
            f"rx bench: code {revision or '?'}, settings {env['DJANGO_SETTINGS_MODULE']}, "
            f"python {sys.version.split()[0]}, {os.cpu_count()} cores shared by this client, "
            f"one Daphne process and PostgreSQL; load average {os.getloadavg()[0]:.2f}; "
            f"database {database}; redis {args.redis_url or 'none (in-process cache)'}; "
            f"signing {algorithm}"
        )
        prepare_database(env)
        profile_items = size.profile_path + 2 if profile_kinds & {"path", "claims"} else 0
        spec = {
            "drafts": size.warm
            + size.signs
            + (size.profile_signs if "sign" in profile_kinds else 0),
            "login": 2,
            "items": size.path * len(size.workers) + size.rounds + profile_items,
            "pharmacies": max(size.claimants, max(size.workers)),
        }
        started = time.perf_counter()
        plan = Plan(**seed(env, spec))
        print(
            f"set-up: {spec['drafts'] + spec['login']} doctors with a draft, "
            f"{spec['items']} doctor+pharmacist+patient triples, {spec['pharmacies']} pharmacies, "
            f"in {time.perf_counter() - started:.1f} s (not timed below)"
        )
        drafts = plan.drafts[: size.warm + size.signs]
        profile_drafts = plan.drafts[size.warm + size.signs :]
        items = list(plan.items)
        path_items = [items[i * size.path : (i + 1) * size.path] for i in range(len(size.workers))]
        rest = items[size.path * len(size.workers) :]
        claim_items, profile_path_items = rest[: size.rounds], rest[size.rounds :]

        with server("backend.asgi:application", env, log) as (base, pid):
            httpx.get(f"{base}/healthz", timeout=30)
            meter = CpuMeter(pid, database)
            login_notes = asyncio.run(login_check(base, plan))
            signs = asyncio.run(sign_phase(base, plan, drafts, size.warm, pid))
            paths = [
                asyncio.run(path_phase(base, plan, chunk, workers, meter))
                for chunk, workers in zip(path_items, size.workers, strict=True)
            ]
            rounds = asyncio.run(
                claims_phase(base, plan, claim_items, plan.pharmacies[: size.claimants], meter)
            )
            done = [d for p in paths for d in p.done]
            bundles = asyncio.run(fetch_bundles(base, done[: size.bundles]))

        if args.save_bundles:
            Path(args.save_bundles).write_text(json.dumps(bundles, ensure_ascii=False))
        # The server is stopped: the in-process figures have the cores to themselves.
        data = base64.b64decode(bundles[0]["signed_content"]) if bundles else b"x" * 1500
        rates = crypto_rates(algorithm, data, bundles, size.crypto_seconds, size.crypto_repeats)
        raw_sign, raw_verify, warm_rate, cold_rate = (
            rates[k] for k in ("sign", "verify", "warm", "cold")
        )

        print(f"\n[raw cryptography, {algorithm}, over {len(data)} bytes of signed content]")
        print(f"  sign    {raw_sign:10,.0f} /s")
        print(f"  verify  {raw_verify:10,.0f} /s")

        print(
            f"\n[verify_bundle on {len(bundles)} server-produced bundles: root pinned, review "
            f"required; 2 personal signatures per bundle]"
        )
        for label, value, extra in (
            ("warm caches", warm_rate, 2),
            ("cold caches", cold_rate, 5),
        ):
            print(
                f"  {label:<12} {value:8,.0f} bundles/s = {2 * value:8,.0f} signatures/s;  "
                f"signatures/raw verify = {2 * value / raw_verify:5.2f}  "
                f"bundles/raw verify = {value / raw_verify:5.2f} (ceiling 0.50)  "
                f"[{extra} ECDSA verifies per bundle]"
            )
        print(
            "  warm: certificates, chain checks and the CRL are cached (a server or a pharmacy "
            "seeing the same doctors again);\n  cold: every bundle also parses its three "
            "certificates and checks two chain signatures and the CRL signature."
        )

        print(f"\n[console login over HTTP (password + TOTP), {len(login_notes)} doctors]")
        for note in login_notes:
            print(f"  {note}")

        print(
            f"\n[HTTP, one Daphne process, sequential: {size.signs} prescriptions, each with "
            f"its own doctor; {size.warm} warm-up triples dropped]"
        )
        for step in ("GET draft", "POST sign", "GET signed"):
            print(line(step, signs.ms[step]))
        cpu = {k: sum(v) / len(v) for k, v in signs.cpu_ms.items() if v}
        print(
            "  server CPU per request (mean): "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items())
            + (
                f"; sign / GET signed {cpu['POST sign'] / cpu['GET signed']:.2f}x"
                if cpu.get("GET signed")
                else ""
            )
        )
        p50 = {k: pct(v, 0.5) for k, v in signs.ms.items()}
        p95 = {k: pct(v, 0.95) for k, v in signs.ms.items()}
        sign_ratio = p50["POST sign"] / p50["GET signed"] if signs.ms["GET signed"] else 9.9
        print(
            f"  sign / GET signed: p50 {sign_ratio:.2f}x, p95 "
            f"{p95['POST sign'] / p95['GET signed']:.2f}x   (same response body: the GET "
            f"re-verifies the stored signature like the sign response does)"
        )
        print(
            f"  sign / GET draft:  p50 {p50['POST sign'] / p50['GET draft']:.2f}x, p95 "
            f"{p95['POST sign'] / p95['GET draft']:.2f}x   (a draft has no signature to verify)"
        )
        for step, count in signs.errors.items():
            print(f"  errors in {step}: {count}, first: {signs.first_errors[step]}")

        for p in paths:
            server_cpu, pg_cpu, client_cpu = p.cpu
            n = max(1, len(p.done))
            print(
                f"\n[five-step path, {p.workers} concurrent workers, one Daphne process, "
                f"PostgreSQL: {len(p.done)} prescriptions in {p.seconds:.1f} s]"
            )
            print(f"  {p.rate:.1f} prescriptions/s ({6 * p.rate:.0f} requests/s)")
            print(
                f"  CPU per prescription: server {server_cpu * 1000 / n:.1f} ms, PostgreSQL "
                f"{pg_cpu * 1000 / n:.1f} ms, this client {client_cpu * 1000 / n:.1f} ms "
                f"(server busy {100 * server_cpu / p.seconds:.0f}% of one core)"
            )
            for step in PATH_STEPS:
                print(line(step, p.rec.ms[step]))
            print(line("whole path", p.rec.ms["path"]))
            print("  ('code' is the patient's GET that shows the access code; it is in the path)")
            for step, count in p.rec.errors.items():
                print(f"  errors in {step}: {count}, first: {p.rec.first_errors[step]}")

        print(f"\n[{size.claimants} pharmacies claim one active prescription at once]")
        for n, r in enumerate(rounds, 1):
            print(
                f"  round {n}: wall {r.seconds * 1000:6.0f} ms, winners {r.winners}, "
                f"p50 {pct(r.latencies_ms, 0.5):5.0f} ms, max {max(r.latencies_ms):5.0f} ms, "
                f"outcomes {dict(r.outcomes)}; CPU per claim: server "
                f"{r.cpu[0] * 1000 / size.claimants:.1f} ms, PostgreSQL "
                f"{r.cpu[1] * 1000 / size.claimants:.1f} ms"
            )

        best = max(paths, key=lambda p: p.rate)
        verify_ratio = 2 * warm_rate / raw_verify
        claims_ok = bool(rounds) and all(r.winners == 1 and r.seconds < 1.0 for r in rounds)
        worst = max((r.seconds for r in rounds), default=float("nan"))
        targets = [
            (
                "sign",
                "HTTP sign <= 1.5x GET of the same prescription (p50)",
                f"{sign_ratio:.2f}x",
                sign_ratio <= 1.5,
            ),
            (
                "verify",
                "verify_bundle >= 50% of raw verify (signatures/s, warm)",
                f"{100 * verify_ratio:.0f}%  (bundles/s: {100 * warm_rate / raw_verify:.0f}%)",
                verify_ratio >= 0.5,
            ),
            (
                "path",
                "five-step path >= 20 prescriptions/s, 1 process",
                f"{best.rate:.1f}/s at {best.workers} workers",
                best.rate >= 20,
            ),
            (
                "claims",
                f"{size.claimants} concurrent claims: 1 winner, < 1 s",
                f"worst round {worst * 1000:.0f} ms, winners "
                f"{','.join(str(r.winners) for r in rounds)}",
                claims_ok,
            ),
        ]
        print("\n[targets]")
        for _, label, shown, ok in targets:
            print(f"  {label:<58} {shown:<36} {verdict(ok)}")

        wanted = (
            {kind for kind, _, _, ok in targets if not ok} & profile_kinds
            if args.profile == "auto"
            else profile_kinds
        )
        for kind in ("sign", "path", "claims", "verify"):
            if kind not in wanted:
                continue
            if kind == "verify":
                print("\n[profile: verify_bundle, warm caches, in this process]")
                for text in verify_profile(bundles, args.top):
                    print(text)
                continue
            print(
                f"\n[profile: {kind}, server side, cProfile {args.profile_clock} time per request; "
                f"{'one round of concurrent claims' if kind == 'claims' else 'sequential'}]"
            )
            if kind == "sign":
                work = profile_drafts
            elif kind == "path":
                work = profile_path_items[: size.profile_path]
            else:
                work = profile_path_items[size.profile_path : size.profile_path + 2]
            claimants = plan.pharmacies[: size.claimants]
            for text in profiled(
                env,
                kind,
                plan,
                work,
                claimants,
                args.top,
                log,
                args.profile_dir,
                clock=args.profile_clock,
            ):
                print(text)
        redis_cleanup(args.redis_url, env["CACHE_KEY_PREFIX"])
        report_server_errors(log)
    print(
        f"\ntotal run time {time.perf_counter() - run_started:.0f} s; load average now "
        f"{os.getloadavg()[0]:.2f} (other work on the machine skews every figure)"
    )


if __name__ == "__main__":
    main()
