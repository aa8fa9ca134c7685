"""Base classes for every API view of the project.

They add one behaviour to DRF's: the ``Idempotency-Key`` mechanism around the handler
(see ``backend.api.idempotency``). Views stay thin: validate, call one service, answer.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from backend.api.idempotency import Replay, idempotency_begin, replay_response, run_idempotently
from backend.audit.services import RequestMeta, audit_access


class IdempotentDispatchMixin:
    #: Views that issue credentials set this: the header is ignored and nothing stored.
    idempotency_exempt = False

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Response:
        view: Any = self
        view.args = args
        view.kwargs = kwargs
        drf_request = view.initialize_request(request, *args, **kwargs)
        view.request = drf_request
        view.headers = view.default_response_headers
        try:
            view.initial(drf_request, *args, **kwargs)
            method = (drf_request.method or "").lower()
            if method in view.http_method_names:
                handler = getattr(view, method, view.http_method_not_allowed)
            else:
                handler = view.http_method_not_allowed
            record = (
                idempotency_begin(drf_request)
                if handler != view.http_method_not_allowed and not view.idempotency_exempt
                else None
            )
            if record is None:
                response = handler(drf_request, *args, **kwargs)
            else:
                response = run_idempotently(record, lambda: handler(drf_request, *args, **kwargs))
        except Replay as replay:
            response = replay_response(replay.record)
        except Exception as exc:
            response = view.handle_exception(exc)
        view.response = view.finalize_response(drf_request, response, *args, **kwargs)
        return view.response  # type: ignore[no-any-return]


class ApiView(IdempotentDispatchMixin, APIView):
    pass


class ListApiView(IdempotentDispatchMixin, generics.ListAPIView):  # type: ignore[type-arg]
    pass


class RetrieveApiView(IdempotentDispatchMixin, generics.RetrieveAPIView):  # type: ignore[type-arg]
    pass


def read_recorded(
    request: Any, object_type: str, object_id: Any, *, what: str = "viewed", **after: Any
) -> None:
    """The edge's record of a read it allowed (``backend.audit.services.audit_access``:
    staff only), with the account, address and browser of ``request``; ``after`` says
    what was read."""
    audit_access(
        actor=request.user,
        object_type=object_type,
        object_id=object_id,
        what=what,
        after=after or None,
        meta=RequestMeta.from_request(request),
    )


# A list whose rows carry medical data (a queue with complaints and diagnoses, the
# regulator's records): each page a staff account reads is recorded, one audit event
# ``<audit_object_type>.listed`` naming the page's objects and the filters (DOMAIN rule 12;
# ``backend.audit.services.audit_access``). A comment, not a docstring: drf-spectacular
# would give a docstring to every operation of the views that inherit it.
class AuditedListApiView(ListApiView):
    audit_object_type = ""
    #: The key of a row's id in the serialized page.
    audit_id_key = "id"

    def list(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        data: Any = response.data
        rows = data["results"] if isinstance(data, dict) else data
        read_recorded(
            request,
            self.audit_object_type,
            "",
            what="listed",
            ids=[str(row[self.audit_id_key]) for row in rows],
            filters={k: request.query_params.get(k) for k in sorted(request.query_params)},
        )
        return response
