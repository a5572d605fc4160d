#!/usr/bin/env python3
"""Run `otter … --progress json …`, timestamp its JSON progress lines as they arrive, and print
"WALL_S PEAK_RSS_KIB DOWNLOAD_S": wall time and peak RSS of otter alone (wait4), and the time from
the first layer-start to the last layer-done event (the download phase).
usage: run-with-progress.py LOG otter ARGS..."""
import json
import os
import subprocess
import sys
import time

log, cmd = sys.argv[1], sys.argv[2:]
start = time.monotonic()
first_start = last_done = None
with open(log, "w") as out:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL)
    for line in proc.stdout:
        now = time.monotonic()
        try:
            event = json.loads(line).get("event")
        except ValueError:
            out.write(line.decode(errors="replace"))
            continue
        if event == "layer_start" and first_start is None:
            first_start = now
        if event == "layer_done":
            last_done = now
    _, status, usage = os.wait4(proc.pid, 0)
wall = time.monotonic() - start
if status != 0 or first_start is None or last_done is None:
    sys.exit(f"otter failed or printed no download events (status {status}); see {log}")
print(f"{wall:.2f} {usage.ru_maxrss} {last_done - first_start:.2f}")
