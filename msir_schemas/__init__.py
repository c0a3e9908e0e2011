"""The HTTP API's request and answer models (pydantic only), shared by the service (``app``) and ``msir_client``."""
