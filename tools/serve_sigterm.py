"""Issue 27: SIGTERM during load. Starts `visionzoo serve MODEL`, keeps CONCURRENCY clients posting IMAGES (one new
connection per request, so a refused connection and an accepted request are told apart), sends SIGTERM after
AFTER seconds, and counts every request's outcome: answered (by status), refused at connect (the server had
stopped accepting), or dropped (connected, then closed without an answer: an accepted request lost). Prints and
writes JSON with the server's exit code.
Usage: python tools/serve_sigterm.py MODEL IMAGES_DIR OUT.json [--concurrency 32] [--after 5] [-- serve flags]"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from visionzoo.serve.loadgen import free_port, load_images


async def load(url: str, images: list, concurrency: int, stop_after: float, proc: subprocess.Popen) -> dict:
    outcomes: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)  # a fresh connection each time
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def client_loop(i: int) -> None:
            n = i
            while proc.poll() is None:
                img = images[n % len(images)]
                n += concurrency
                try:
                    r = await client.post("/v1/predict", content=img.body, headers={"content-type": img.content_type})
                    outcomes[f"answered {r.status_code}"] += 1
                except httpx.ConnectError:
                    outcomes["refused at connect"] += 1
                    await asyncio.sleep(0.05)
                except httpx.TransportError as e:
                    outcomes[f"dropped ({type(e).__name__})"] += 1

        async def terminate() -> None:
            await asyncio.sleep(stop_after)
            outcomes["_sigterm_at_s"] = round(time.perf_counter() - started, 2)
            proc.send_signal(signal.SIGTERM)

        await asyncio.gather(terminate(), *(client_loop(i) for i in range(concurrency)))
    return dict(outcomes)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model"), p.add_argument("images"), p.add_argument("out")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--after", type=float, default=5.0)
    args, serve_flags = p.parse_known_args()
    serve_flags = [f for f in serve_flags if f != "--"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "visionzoo", "serve", args.model, "--port", str(port),
                             *serve_flags], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)
    outcomes = asyncio.run(load(url, load_images(args.images), args.concurrency, args.after, proc))
    code = proc.wait(timeout=120)
    dropped = sum(v for k, v in outcomes.items() if k.startswith("dropped"))
    answered = {k: v for k, v in outcomes.items() if k.startswith("answered")}
    result = {"concurrency": args.concurrency, "sigterm_after_s": args.after, "outcomes": outcomes,
              "answered": sum(answered.values()), "dropped": dropped, "exit_code": code,
              "every_accepted_answered": dropped == 0 and set(answered) <= {"answered 200"}}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if result["every_accepted_answered"] and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
