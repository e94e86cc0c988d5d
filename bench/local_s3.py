"""The local S3 on a big object, as the local cloud runs it and as moto alone would.

Per round, in alternating order, each side gets a new moto server process on a loopback
port (this module's `serve`): `mended` as `localcloud` runs it, `moto` with the two mends
for big objects undone (`localcloud.s3_ranges`, `localcloud.s3_multipart`). A client puts
an object of `--mib` MiB (by default the 10M-row bench file's size) and times, as the
batch worker does them: the 64 KiB footer's ranged GET, a ranged GET from byte 4 to the end
(the row-group stream: its first byte and its last), a GET of the whole object (as the
worker reads a parquet file of up to 128 MiB: try `--mib 91`, the 1M-row file's size), and
the completion of a multipart upload of ten 16 MiB parts (the 10M-row file's output).
Recorded per side: those times, the server's CPU for the two ranged GETs, for the whole GET
and for the completion, and the server's peak RSS over the round (the object's upload
included); per round, mended / moto of each.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from bench.batch import high_water_kib
from bench.processes import LOOPBACK, Managed, free_port
from bench.stats import DATA_DIR, Recorder
from localcloud.waiting import wait_until

SIDES = ("mended", "moto")
BUCKET = "bench-local-s3"
FOOTER = 64 * 1024
PART = 16 * 1024 * 1024
PARTS = 10


def serve(side: str, port: int) -> None:
    from localcloud import s3_multipart, s3_ranges
    from localcloud.server import MotoServer
    from localcloud.settings import LocalCloudSettings

    MotoServer(LocalCloudSettings(port=port)).start()
    if side == "moto":
        s3_ranges.unpatch()
        s3_multipart.unpatch()
    print("ready", flush=True)
    threading.Event().wait()


def one_side(side: str, body: bytes, part: bytes, logs: Path) -> dict[str, float]:
    port = free_port()
    server = Managed(
        [sys.executable, "-m", "bench.local_s3", "serve", side, str(port)],
        name=f"moto-{side}",
        log=logs / f"local-s3-{side}.log",
    )
    try:
        wait_until(lambda: "ready" in server.tail, timeout=60, what=f"the {side} server")
        return _measure(server, port, body, part)
    finally:
        server.stop()


def _measure(server: Managed, port: int, body: bytes, part: bytes) -> dict[str, float]:
    s3: Any = boto3.client(
        "s3",
        endpoint_url=f"http://{LOOPBACK}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="input.parquet", Body=body)
    figures: dict[str, float] = {}
    cpu, started = server.cpu_seconds(), time.perf_counter()
    footer = s3.get_object(Bucket=BUCKET, Key="input.parquet", Range=f"bytes=-{FOOTER}")
    assert footer["Body"].read() == body[-FOOTER:]
    figures["footer GET"] = time.perf_counter() - started
    figures |= _streamed_get(s3, "stream GET", len(body) - 4, Range="bytes=4-")
    figures["server CPU for the two GETs"] = server.cpu_seconds() - cpu
    cpu = server.cpu_seconds()
    figures |= _streamed_get(s3, "whole GET", len(body))
    figures["server CPU for the whole GET"] = server.cpu_seconds() - cpu
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="output.csv")["UploadId"]
    parts = [
        {
            "PartNumber": number,
            "ETag": s3.upload_part(
                Bucket=BUCKET, Key="output.csv", UploadId=upload, PartNumber=number, Body=part
            )["ETag"],
        }
        for number in range(1, PARTS + 1)
    ]
    cpu, started = server.cpu_seconds(), time.perf_counter()
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key="output.csv", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    figures["multipart completion"] = time.perf_counter() - started
    figures["server CPU for the completion"] = server.cpu_seconds() - cpu
    figures["server peak RSS"] = high_water_kib(server.pid) / 1024
    return figures


def _streamed_get(s3: Any, name: str, size: int, **request: str) -> dict[str, float]:
    """Seconds to the first and to the last byte of a GET of the object, read in 1 MiB chunks."""
    started = time.perf_counter()
    chunks = s3.get_object(Bucket=BUCKET, Key="input.parquet", **request)["Body"].iter_chunks(
        1 << 20
    )
    received = len(next(chunks))
    first = time.perf_counter() - started
    received += sum(len(chunk) for chunk in chunks)
    assert received == size
    return {f"{name}, first byte": first, f"{name}, last byte": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local_s3", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=911, help="the object's size (955 MB)")
    args = parser.parse_args(argv)
    recorder = Recorder("local-s3")
    recorder.notes |= {"rounds": args.rounds, "object_mib": args.mib}
    body, part = os.urandom(args.mib * 2**20), os.urandom(PART)
    for number in range(args.rounds):
        sides = SIDES if number % 2 == 0 else SIDES[::-1]
        results = {side: one_side(side, body, part, DATA_DIR / "logs") for side in sides}
        for name in results["moto"]:
            unit = "MiB" if "RSS" in name else "s"
            for side in SIDES:
                recorder.add(f"{side}: {name}", unit, results[side][name])
            recorder.add(
                f"mended / moto: {name}", "x", results["mended"][name] / results["moto"][name]
            )
        ratios = {
            name: f"{results['mended'][name] / results['moto'][name]:.2f}x"
            for name in results["moto"]
        }
        print(f"round {number + 1}/{args.rounds}, mended / moto: {ratios}", flush=True)
    recorder.print_table()
    recorder.save()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
