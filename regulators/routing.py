from django.urls import path

from regulators.consumers import RegulatorFeedConsumer

websocket_urlpatterns = [path("ws/regulator/feed/", RegulatorFeedConsumer.as_asgi())]
