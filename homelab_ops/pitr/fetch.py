"""restore_command for a temporary recovery cluster: `python fetch.py STAGING %f %p`.

Stdlib only and run as a script (PostgreSQL starts it once per segment, as its own
OS user): the restoring process has already decrypted and checked the segments
into STAGING. A finished segment is gunzipped into place; the newest, still
partial segment is gunzipped and padded to the segment size, which is how
recovery reads WAL that was streamed but not yet complete. A missing file exits 1
(PostgreSQL's "not archived", the normal end of recovery); a damaged one is
reported in STAGING/fetch.log with its name, then exits 1 too.
"""

import os
import sys
import zlib

SEG = int(os.environ.get("HOMELAB_WAL_SEGMENT_SIZE", str(16 << 20)))


def _gunzip(path: str, out) -> int:
    d = zlib.decompressobj(wbits=31)
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            data = d.decompress(chunk)
            out.write(data)
            n += len(data)
    data = d.flush()
    out.write(data)
    return n + len(data), d.eof


def main(staging: str, name: str, dest: str) -> int:
    full, partial, plain = (os.path.join(staging, name + s) for s in (".gz", ".gz.partial", ""))
    if os.path.exists(plain):  # timeline history files are staged as they are
        with open(plain, "rb") as f, open(dest, "wb") as out:
            out.write(f.read())
        return 0
    src = full if os.path.exists(full) else partial if os.path.exists(partial) else None
    if src is None:
        return 1
    tmp = dest + ".fetching"
    try:
        with open(tmp, "wb") as out:
            size, complete = _gunzip(src, out)
            if src == full and (size != SEG or not complete):
                raise ValueError(f"decompressed to {size} bytes, not {SEG}")
            if size > SEG:
                raise ValueError(f"decompressed to {size} bytes, more than a segment")
            out.write(b"\0" * (SEG - size))
        os.replace(tmp, dest)
    except (OSError, ValueError, zlib.error) as e:
        with open(os.path.join(staging, "fetch.log"), "a") as log:
            log.write(f"{name}: damaged: {e}\n")
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return 1
    with open(os.path.join(staging, "fetched.log"), "a") as log:
        log.write(f"{name}{' (partial)' if src == partial else ''}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
