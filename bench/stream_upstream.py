"""A paced OpenAI-compatible streaming upstream on asyncio, for thousands of streams at once.

`python -m bench.stream_upstream PORT FRAMING TOKENS INTERVAL`: every POST gets a
`chat.completion.chunk` stream of TOKENS tokens INTERVAL seconds apart, framed as FRAMING:
`chunked` (Transfer-Encoding: chunked), `length` (a Content-Length body, each piece still
written when it is due) or `close` (HTTP/1.0 style, the body ends when the connection closes).
Each token carries its emission time (time.monotonic, one clock for the whole machine).
"""
from __future__ import annotations

import asyncio
import sys
import time

from bench.paced_upstream import chunk, usage_chunk


def pieces(tokens: int):
    """The stream's events; a token's text is filled in when it is sent."""
    yield chunk({"role": "assistant", "content": ""})
    for _ in range(tokens):
        yield None  # placeholder: a token, stamped when due
    yield chunk({}, "stop")
    yield usage_chunk(tokens)
    yield b"data: [DONE]\n\n"


TOKEN_SIZE = len(chunk({"content": f"{0.0:017.6f}|"}))


async def handle(reader, writer, framing: str, tokens: int, interval: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            events = list(pieces(tokens))
            total = sum(TOKEN_SIZE if e is None else len(e) for e in events)
            if framing == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
            elif framing == "length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             + f"Content-Length: {total}\r\n\r\n".encode())
            else:
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            for event in events:
                if event is None:
                    await asyncio.sleep(interval)
                    event = chunk({"content": f"{time.monotonic():017.6f}|"})
                writer.write(b"%x\r\n%s\r\n" % (len(event), event) if framing == "chunked" else event)
                await writer.drain()
            if framing == "chunked":
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            if framing == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, framing: str, tokens: int, interval: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, framing, tokens, interval),
                                        "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
