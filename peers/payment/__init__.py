"""The bundled payment peer: a mobile-payment gateway (WeChat Pay API v3 style) and the
medical-insurance platform (2207/2208), as one real HTTP service (``python -m
peers.payment``). Wire protocol: ``PROTOCOL.md``; running it: ``README.md``."""
