"""Serving: the HTTP service (``serve.http``), its stdlib client (``serve.client``) and the hot-folder
watcher (``serve.watch``). FastAPI and uvicorn come with the ``serve`` extra and are imported only
by ``serve.http`` and the ``crystal-rt serve`` command."""

__all__: list[str] = []
