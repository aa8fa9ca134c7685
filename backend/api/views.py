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
