"""The client side of voicefarm: a typed API client (api), the client commands, `voicefarm batch` and `eval`.

from voicefarm.client import Client
"""

from voicefarm.client.api import ApiError, BatchView, Client, JobView, ManifestLine, Result, find_key

__all__ = ["ApiError", "BatchView", "Client", "JobView", "ManifestLine", "Result", "find_key"]
