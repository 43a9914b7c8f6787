#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (gitignored), from
#   - protocols/conformance/traccar/{watch,gt06,jt808,trv}.json: every entry's `frame`
#     (hex or text per its `encoding`);
#   - protocols/<family>/vectors/*.json: `frame` (hex for gt06, text for trv and watch) or,
#     for multi-step vectors (jt808), every step's `frame_hex` concatenated in order, so the
#     seed replays the whole connection (register, auth, reports) in one session;
#   - a few hand-written canonical JSON payloads for `canonical`;
#   - protocols/<profile>/vectors/*.json payloads for `profile` (see below).
# A family seed is one control byte then the stream (see fuzz/src/lib.rs `run_family`):
# 0x3f = 64-byte reads, no device known; 0xbf = 64-byte reads, session pre-identified (the
# vectors' `logged_in_as`, and Traccar's harness, which always knows the device); 0x00/0x80 =
# the same with 1-byte reads; bit 6 = a run of bytes longer than the maximum frame inserted mid-stream.
# Files are named by the SHA-1 of their content, as libFuzzer names its own, so re-running is
# idempotent and duplicates collapse. Needs python3 (standard library only).
# Usage: bash fuzz/seed.sh
set -euo pipefail
cd "$(dirname "$0")"
python3 - ../protocols/conformance/traccar ../protocols corpus <<'PY'
import hashlib, json, os, sys
from pathlib import Path

traccar, protocols, corpus = map(Path, sys.argv[1:4])
FAMILIES = ["watch", "gt06", "jt808", "trv"]
BINARY = {"gt06", "jt808"}  # families whose vector `frame` is hex
ANON, KNOWN = 0x3F, 0xBF

counts = {}

def write(target, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    p = d / hashlib.sha1(data).hexdigest()
    if not p.exists():
        p.write_bytes(data)
    counts.setdefault(target, set()).add(p.name)

def unhex(s):
    return bytes.fromhex("".join(s.split()))

for fam in FAMILIES:
    target = "framer_" + fam
    # Traccar's test frames.
    for i, entry in enumerate(json.loads((traccar / f"{fam}.json").read_text())):
        frame = entry.get("frame")
        if not isinstance(frame, str):
            continue
        data = unhex(frame) if entry.get("encoding") == "hex" else frame.encode()
        write(target, bytes([KNOWN]) + data)
        if i == 0:
            # With a run longer than the family's maximum frame inside (control bit 6).
            write(target, bytes([KNOWN | 0x40]) + data)
    # Our own vectors.
    vdir = protocols / fam / "vectors"
    for path in sorted(vdir.glob("*.json")) if vdir.is_dir() else []:
        v = json.loads(path.read_text())
        if "steps" in v:
            parts = []
            for step in v["steps"]:
                if "frame_hex" in step:
                    parts.append(unhex(step["frame_hex"]))
                elif "frame" in step:
                    parts.append(unhex(step["frame"]) if fam in BINARY else step["frame"].encode())
            data = b"".join(parts)
            known = "logged_in_as" in v or any("logged_in_as" in s for s in v["steps"])
        elif "frame_hex" in v:
            data, known = unhex(v["frame_hex"]), "logged_in_as" in v
        elif "frame" in v:
            data = unhex(v["frame"]) if fam in BINARY else v["frame"].encode()
            known = "logged_in_as" in v
        else:
            print(f"seed.sh: {path}: no frame, skipped", file=sys.stderr)
            continue
        write(target, bytes([KNOWN if known else ANON]) + data)
        # The same stream read one byte at a time: the framers' partial-frame paths.
        write(target, bytes([0x80 if known else 0x00]) + data)

CANONICAL = [
    '{"type":"sos"}',
    '{"type":"sos","seq":17,"ts":"2026-03-05T08:14:58Z"}',
    '{"type":"fall","ts":"2026-03-05T08:14:58+08:00"}',
    '{"type":"smoke","state":"alarm"}',
    '{"type":"gas","state":"alarm","gas":"co"}',
    '{"type":"water","state":"leak"}',
    '{"type":"door","state":"open"}',
    '{"type":"motion","room":"kitchen"}',
    '{"type":"vitals","heart_rate":72,"systolic":120,"diastolic":80,"spo2":97.5,"temperature":36.6,"blood_glucose":5.4,"steps":1200}',
    '{"type":"position","lat":22.5431,"lon":114.0579,"source":"gps","valid":true,"speed_kmh":3,"course_deg":90,"altitude_m":12.5,"satellites":9,"accuracy_m":10}',
    '{"type":"position","source":"wifi","wifi":[{"mac":"74:de:2b:44:88:8c","rssi":-60}],"cells":[{"mcc":460,"mnc":0,"lac":9834,"cid":7703}]}',
    '{"type":"battery","percent":83,"level":"normal","voltage_v":3.9}',
    '{"type":"removal","state":"removed"}',
    '{"type":"tamper"}',
    '{"type":"power","state":"lost"}',
    '{"type":"fault","code":"E42"}',
    '{"type":"cancel"}',
    '{"type":"heartbeat"}',
    '{"type":"alarm","code":"vendor-17"}',
    '[{"type":"heartbeat"},{"type":"smoke","state":"on fire"},7,{"type":"water","state":"leak"}]',
    '[]',
    '{"type":"teleport"}',
    '{"ts":"2026-03-05T08:14:58Z"}',
    '{"type":1}',
    '"sos"',
    '{"type":"sos","seq":-1,"ts":"not a time"}',
    '{"type":"sos",',
]
for payload in CANONICAL:
    write("canonical", payload.encode())

# Vendor profiles: one control byte (the profile's index in name order, as the `profile`
# target picks it) then the payload of each vector.
PROFILES = sorted(p.stem for p in protocols.glob("*.toml"))
for idx, name in enumerate(PROFILES):
    vdir = protocols / name / "vectors"
    for path in sorted(vdir.glob("*.json")) if vdir.is_dir() else []:
        v = json.loads(path.read_text())
        data = v["payload_text"].encode() if "payload_text" in v else json.dumps(v["payload"]).encode()
        write("profile", bytes([idx]) + data)

# The elder-database template: the header and two sound rows from benches/template_rows.py,
# in UTF-8 and GB18030, and the same with a row broken (a wrong check character).
import subprocess
for enc in ([], ["--gb18030"]):
    rows = subprocess.run([sys.executable, str(protocols.parent / "benches" / "template_rows.py"), "2", *enc],
                          check=True, capture_output=True).stdout
    write("import_template", rows)
    write("import_template", rows.replace(b"X,", b"1,", 1))

for target in sorted(counts):
    print(f"seed.sh: corpus/{target}: {len(counts[target])} seeds")
PY
