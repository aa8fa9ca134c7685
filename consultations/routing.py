from django.urls import path

from consultations.consumers import ConsultationConsumer

websocket_urlpatterns = [
    path("ws/consultations/<str:consultation_id>/", ConsultationConsumer.as_asgi()),
]
