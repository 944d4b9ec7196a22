"""`mono-llm realtime-client FILE`: stream an audio file to /v1/realtime, print the text.

The file (any format the audio extra decodes) is sent as PCM16 in 100 ms frames at real-time
pace (`--speed 2` sends twice as fast, `--speed 0` as fast as possible), the way a microphone
would; partial text is printed as it arrives, then the final text. `--protocol vllm` (default)
speaks vLLM's realtime protocol at 16 kHz; `--protocol openai` OpenAI's realtime transcription
protocol at 24 kHz, committing once at the end (no server VAD).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

FRAME_S = 0.1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "realtime-client",
        help="stream an audio file to a server's /v1/realtime and print the transcript",
        description="Stream an audio file to /v1/realtime at real-time speed and print the "
        "partial and final transcripts.",
    )
    parser.add_argument("file", help="audio file (WAV, FLAC, MP3, M4A, OGG, WEBM, ...)")
    parser.add_argument(
        "--url", default="ws://127.0.0.1:8000/v1/realtime", help="the server's /v1/realtime"
    )
    parser.add_argument("--model", default=None, help="served model name (default: the first)")
    parser.add_argument(
        "--api-key",
        default=None,
        help="the server's --api-key (default: $MONO_LLM_API_KEY or $VLLM_API_KEY)",
    )
    parser.add_argument("--language", default=None, help="ISO-639-1 code (default: detected)")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="x real time; 0 sends as fast as possible"
    )
    parser.add_argument("--protocol", choices=("vllm", "openai"), default="vllm")
    parser.set_defaults(handler=_run)


def _pcm16_frames(path: str, rate: int) -> list[bytes]:
    import numpy as np

    from mono_llm.audio import AudioLimits, decode_audio

    data = Path(path).expanduser().read_bytes()
    samples = decode_audio(
        data, sampling_rate=rate, limits=AudioLimits(max_bytes=len(data))
    ).samples
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
    step = 2 * round(FRAME_S * rate)
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def _stream(args: argparse.Namespace, frames: list[bytes]) -> int:
    from websockets.asyncio.client import connect

    key = args.api_key or os.environ.get("MONO_LLM_API_KEY") or os.environ.get("VLLM_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    openai = args.protocol == "openai"
    url = args.url + ("?intent=transcription" if openai and "?" not in args.url else "")
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        json.loads(await ws.recv())  # session.created / transcription_session.created
        if openai:
            transcription = {"model": args.model, "language": args.language}
            update = {
                "type": "transcription_session.update",
                "session": {
                    "input_audio_format": "pcm16",
                    "input_audio_transcription": transcription,
                    "turn_detection": None,
                },
            }
            await ws.send(json.dumps(update))
        else:
            update = {"type": "session.update", "model": args.model, "language": args.language}
            await ws.send(json.dumps(update))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": False}))
        receiver = asyncio.create_task(_print_events(ws))
        started = time.monotonic()
        for index, frame in enumerate(frames):
            if receiver.done():
                break
            event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}
            await ws.send(json.dumps(event))
            if args.speed > 0:
                due = started + (index + 1) * FRAME_S / args.speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        if not receiver.done():
            commit: dict[str, Any] = {"type": "input_audio_buffer.commit"}
            if not openai:
                commit["final"] = True
            await ws.send(json.dumps(commit))
        return await receiver


async def _print_events(ws: Any) -> int:
    async for message in ws:
        event = json.loads(message)
        kind = event.get("type")
        if kind in ("transcription.delta", "conversation.item.input_audio_transcription.delta"):
            sys.stdout.write(event["delta"])
            sys.stdout.flush()
        elif kind in (
            "transcription.done",
            "conversation.item.input_audio_transcription.completed",
        ):
            text = event.get("text", event.get("transcript", ""))
            sys.stdout.write(f"\n[final] {text}\n")
            return 0
        elif kind == "error":
            error = event["error"]
            message_text = error.get("message") if isinstance(error, dict) else error
            print(f"\nerror: {message_text}", file=sys.stderr)
            return 1
    print("\nerror: the server closed the connection", file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    try:
        frames = _pcm16_frames(args.file, 24000 if args.protocol == "openai" else 16000)
    except ImportError:
        print(
            "error: realtime-client needs the audio extra: pip install mono-llm[audio]",
            file=sys.stderr,
        )
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_stream(args, frames))
    except OSError as exc:
        print(f"error: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a refused handshake or a closed connection, in one line
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
