"""A TCP relay: `python -m voicefarm.ops.relay LISTEN_HOST:PORT TARGET_HOST:PORT`.

`voicefarm up` with `listen` set opens the embedded S3 on the network address through it. `weed mini` binds every
one of its listeners (master, volume, filer, their gRPC ports: none of them authenticated) to one address, so it
stays on loopback and only its S3 port, which checks every request's signature, is relayed. Bytes pass through
untouched: a signed request (its Host header too) reaches SeaweedFS exactly as the client signed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]) -> None:
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), timeout=10)
    except (OSError, TimeoutError):
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def relay(listen: tuple[str, int], target: tuple[str, int]) -> None:
    server = await asyncio.start_server(lambda r, w: _serve_one(r, w, target), *listen, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m voicefarm.ops.relay LISTEN_HOST:PORT TARGET_HOST:PORT", file=sys.stderr)
        return 2
    asyncio.run(relay(_address(args[0]), _address(args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
