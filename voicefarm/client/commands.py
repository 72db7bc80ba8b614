"""The client commands of `voicefarm`: voices add, say, batch, jobs, status, verify, eval. They talk to a farm's API
only (VOICEFARM_API_URL, default the local farm's port; the key from VOICEFARM_API_KEY or
$VOICEFARM_DATA_DIR/api_key).

`register(sub)` adds each command's parser and its handler (`args.handler(args)` runs it; it returns the exit code):
every handler gets a `Client` for the farm, and an API error ends the command with code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "aac", "pcm")

Command = Callable[[Any, argparse.Namespace], int]  # (client, args) -> exit code


def register(sub: Any) -> None:
    voices = sub.add_parser("voices", help="cloned voices (client)").add_subparsers(
        dest="voices_command", required=True
    )
    add = voices.add_parser("add", help="clone a voice from a 3-30 s reference clip and wait until it is ready")
    add.add_argument("audio", type=Path)
    add.add_argument("--transcript")
    add.add_argument("--name", default="")
    add.add_argument("--language")
    add.add_argument("--no-wait", action="store_true")
    consent = add.add_argument_group("consent (docs/guide/consent.md)")
    consent.add_argument(
        "--consent-audio", type=Path, metavar="FILE", help="the speaker reading the statement of --consent-id aloud"
    )
    consent.add_argument("--consent-id", help="the statement's id (GET /v1/consent/statement)")
    consent.add_argument(
        "--attest", action="store_true", help="assert that the speaker agreed to the cloning (attested tenants)"
    )
    add.set_defaults(handler=_with_client(voices_add))
    voices.add_parser("list", help="stock and cloned voices").set_defaults(handler=_with_client(voices_list))

    say = sub.add_parser("say", help="synthesize one text and save it (client)")
    say.add_argument("text")
    say.add_argument("--voice")
    say.add_argument("--ssml", action="store_const", const="ssml", dest="text_format", help="the text is SSML")
    say.add_argument("-o", "--output", type=Path, required=True)
    _speech_options(say)
    say.set_defaults(handler=_with_client(say_command))

    batch = sub.add_parser("batch", help="a CSV or JSONL of lines to files named by line id; resumable (client)")
    batch.add_argument("lines", type=Path, help="CSV (id,text[,voice,mode,instruct,language,speed,seed,...]) or JSONL")
    batch.add_argument("--voice")
    batch.add_argument("--out", type=Path, required=True, help="where the files, manifest.csv and the state go")
    batch.add_argument("--name", default="")
    batch.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    batch.add_argument("--no-progress", action="store_true")
    _speech_options(batch)
    batch.set_defaults(handler=_with_client(batch_command))

    jobs = sub.add_parser("jobs", help="recent jobs (client)")
    jobs.add_argument("--status")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(handler=_with_client(jobs_command))
    status = sub.add_parser("status", help="the farm's readiness, live workers and recent batches (client)")
    status.set_defaults(handler=_with_client(status_command))

    verify = sub.add_parser("verify", help="does a file carry the farm's watermark; its label if you made it (client)")
    verify.add_argument("file", type=Path)
    verify.add_argument("--pcm-rate", type=int, metavar="HZ", help="the file is raw 16-bit PCM at this rate")
    verify.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    verify.set_defaults(handler=_with_client(verify_command))

    ev = sub.add_parser("eval", help="run an evaluation set through the farm: CER/WER, held-out SIM, RTF (client)")
    ev.add_argument("set", type=Path, help="a set directory (benchmarks/make_eval_set.py makes one)")
    ev.add_argument("--json", type=Path, metavar="FILE", help="write the per-line figures here")
    ev.add_argument("--seed", type=int, default=1, help="every line's seed, so runs compare (default 1)")
    ev.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ev.set_defaults(handler=_with_client(eval_command))


def _speech_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("clone", "cross_lingual", "instruct"))
    parser.add_argument("--instruct")
    parser.add_argument("--language")
    parser.add_argument("--speed", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--format", choices=FORMATS)
    parser.add_argument("--sample-rate", type=int)
    parser.add_argument("--loudness", type=float, metavar="LUFS", help="integrated loudness target, e.g. -16")
    parser.add_argument("--trim-silence", type=float, metavar="S", dest="trim_silence_s", help="pad left each end")
    parser.add_argument("--channels", type=int, choices=(1, 2))
    parser.add_argument("--words", action="store_true", default=None, help="word timings in the result")
    parser.add_argument(
        "--disclosure",
        choices=("none", "start", "end"),
        help="a spoken AI notice before or after the text (default: the tenant's)",
    )
    qa = parser.add_mutually_exclusive_group()
    qa.add_argument("--qa", action="store_true", default=None, help="check every take (default for batch lines)")
    qa.add_argument("--no-qa", action="store_false", dest="qa", help="skip the QA gate")


_OPTION_NAMES = (
    "voice", "mode", "instruct", "language", "speed", "seed", "format", "sample_rate",
    "loudness", "trim_silence_s", "channels", "words", "qa", "text_format", "disclosure",
)  # fmt: skip


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _OPTION_NAMES if getattr(args, name, None) is not None}


def _with_client(command: Command) -> Callable[[argparse.Namespace], int]:
    """The handler of a client command: `command` with a client for the farm; an API error exits with 2."""

    def handler(args: argparse.Namespace) -> int:
        from voicefarm.client.api import ApiError, Client

        try:
            return command(Client.from_env(), args)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return handler


def voices_list(client: Any, args: argparse.Namespace) -> int:
    for voice in client.list_voices().get("voices", []):
        print(f"{voice.get('id', voice.get('name'))}  {voice.get('status', 'stock')}  {voice.get('name', '')}")
    return 0


def voices_add(client: Any, args: argparse.Namespace) -> int:
    created = client.create_voice(
        args.audio,
        transcript=args.transcript,
        name=args.name,
        language=args.language,
        consent_audio=args.consent_audio,
        consent_id=args.consent_id,
        consent_attested=args.attest,
    )
    print(f"voice {created['id']}: {created['status']}")
    if args.no_wait:
        return 0
    voice = client.wait_voice(created["id"])
    print(f"voice {voice['id']}: {voice['status']}" + (f" ({voice.get('error')})" if voice.get("error") else ""))
    return 0 if voice["status"] == "ready" else 1


def say_command(client: Any, args: argparse.Namespace) -> int:
    options = _options(args)
    suffix = args.output.suffix.lstrip(".").lower()
    suffix = "aac" if suffix == "m4a" else suffix  # aac comes in an MPEG-4 audio file
    options.setdefault("format", suffix if suffix in FORMATS else "wav")
    job = client.wait_job(client.submit_job(args.text, **options)["id"])
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error')}", file=sys.stderr)
        return 1
    client.download(job, args.output)
    result = job["result"]
    cached = " (cached)" if result.get("cached") else ""
    print(f"{args.output}: {result['duration_s']:.2f} s of audio, job {job['id']}{cached}")
    return 0


def batch_command(client: Any, args: argparse.Namespace) -> int:
    from voicefarm.client.batch_run import BatchRun

    runner = BatchRun(client, args.lines, args.out, _options(args), args.name, args.poll, progress=not args.no_progress)
    return runner.run()


def eval_command(client: Any, args: argparse.Namespace) -> int:
    from voicefarm.client import eval as evaluation

    return evaluation.run(client, args.set, json_path=args.json, seed=args.seed, quiet=args.quiet)


def verify_command(client: Any, args: argparse.Namespace) -> int:
    """Exit 0 when the file carries the watermark, 1 when it does not."""
    answer = client.verify(args.file, pcm_rate=args.pcm_rate)
    if args.json:
        import json

        print(json.dumps(answer, ensure_ascii=False, indent=2))
        return 0 if answer["watermarked"] else 1
    verdict = "watermarked" if answer["watermarked"] else "no watermark found"
    print(f"{args.file}: {verdict} (score {answer['score']:.3f} over {answer['analysed_s']:.1f} s)")
    if "label" in answer:
        job = answer.get("job") or {}
        print(f"label: {answer['label']}")
        print(f"made by your job {job.get('id')} ({job.get('status')}, created {job.get('created_at')})")
    return 0 if answer["watermarked"] else 1


def jobs_command(client: Any, args: argparse.Namespace) -> int:
    page = client.list_jobs(status=args.status, limit=args.limit)
    for job in page["jobs"]:
        text = job.get("text", "")
        print(f"{job['id']}  {job['status']:<9} {job['created_at'][:19]}  {text[:50]!r}")
    return 0


def status_command(client: Any, args: argparse.Namespace) -> int:
    ready = client.ready()
    print(f"farm {client.url}: {'ready' if ready['http_status'] == 200 else 'NOT ready'}")
    for name, state in ready.get("checks", {}).items():
        print(f"  {name}: {state}")
    for worker in client.workers().get("workers", []):
        print(f"  worker {worker.get('name')}: {worker.get('engine')} {worker.get('jobs_done', 0)} jobs")
    for batch in client.list_batches(limit=5).get("batches", []):
        print(f"  batch {batch['id']} {batch['status']}: {batch['counts']} of {batch['lines']}")
    return 0 if ready["http_status"] == 200 else 1
