#!/usr/bin/env python3
"""Sorts the LeakSanitizer report of the XCTest run into the harness's and ours.

Why a filter and not a suppression file: swift-corelibs-xctest loses its own
test tree at exit, in every package, even one with no test at all
(swift-corelibs-xctest#342, #534; LSan cannot see the pointer Swift keeps to
an object's side table, llvm-project#56751, so the 32-byte side table that
XCTest's XCTWaiter makes shows as a direct leak and the whole tree of test
suites, test runs, test-case objects and their names hangs off it as
"indirect"). LSan's `leak:` patterns match any frame of a stack, and every
allocation a test makes has XCTest frames below it, so no suppression can
name the harness's leaks without hiding ours; and suppressing the direct leak
does not take its indirect children with it.

So the run keeps LSan on and this script reads every leak record (direct and
indirect): a record is OURS when a frame of its allocation stack is in this
repository's Sources/ or Tests/ (file path, or a mangled name of one of the
library's modules), except the XCTestCase initialiser that XCTest's test
closure calls to make each test-case object (`init(name:testClosure:)`, mangled
`...C4name11testClosure...`): that object is the harness's. A record that is
not ours must have an XCTest frame; anything else (no frame of ours, no XCTest
frame) is unexplained and fails too.

Usage: lsan_xctest_filter.py ROOT LOG...   (exit 1 if any record is ours or
unexplained; 0 otherwise; prints a summary either way)
"""
import re
import sys

OUR_MODULES = ("LocalAttention", "GlobalAttention", "MPITransport", "BurstAttention",
               "RowKernelsAVX2", "RowKernelsAVX512", "LocalAttentionTests", "GlobalAttentionTests")
# Swift mangling: a module name is its length then its characters.
OUR_MANGLED = tuple(f"{len(m)}{m}" for m in OUR_MODULES)
HARNESS_INIT = "C4name11testClosure"
HEADER = re.compile(r"^(Direct|Indirect) leak of (\d+) byte\(s\) in (\d+) object\(s\)")
FRAME = re.compile(r"^\s*#\d+ 0x[0-9a-f]+")


def records(text):
    current = None
    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            if current:
                yield current
            current = {"kind": m.group(1), "bytes": int(m.group(2)), "objects": int(m.group(3)),
                       "header": line, "frames": []}
        elif current is not None and FRAME.match(line):
            current["frames"].append(line.strip())
        elif current is not None and line.strip() == "" and current["frames"]:
            yield current
            current = None
    if current:
        yield current


def is_ours(frame, root):
    if HARNESS_INIT in frame:
        return False
    if f"{root}/Sources/" in frame or f"{root}/Tests/" in frame:
        return True
    symbol = frame.split(" in ", 1)[1].split(" ", 1)[0] if " in " in frame else ""
    return any(mangled in symbol for mangled in OUR_MANGLED)


def is_harness(frame):
    return "6XCTest" in frame or "libXCTest.so" in frame or HARNESS_INIT in frame


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1].rstrip("/")
    text = "".join(open(path, errors="replace").read() for path in sys.argv[2:])
    harness_bytes = harness_records = 0
    bad = []
    for record in records(text):
        frames = record["frames"]
        if any(is_ours(f, root) for f in frames):
            bad.append(("ours", record))
        elif any(is_harness(f) for f in frames):
            harness_records += 1
            harness_bytes += record["bytes"]
        else:
            bad.append(("unexplained", record))
    for why, record in bad:
        print(f"LSan ({why}): {record['header']}")
        for frame in record["frames"]:
            print(f"    {frame}")
    print(f"LSan: {harness_records} records ({harness_bytes} bytes) lost by the XCTest harness itself "
          f"(tolerated, see Tests/sanitizers/lsan_xctest_filter.py); {len(bad)} records of ours or unexplained "
          f"({sum(r['bytes'] for _, r in bad)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
