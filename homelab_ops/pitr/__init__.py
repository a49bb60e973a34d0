"""Point-in-time recovery: continuous WAL from pg_receivewal, base backups, restore to a second.

`wal` is the pure part (LSNs, segment names, gaps, what retention may delete);
`receive`, `base`, `recover`, `snapshot` and `health` do the I/O around it.
Layout under `backups.local_dir`:

    _wal/<cluster>/                 WAL segments as pg_receivewal names them, gzip-compressed
                                    (`<24 hex>.gz`, `.gz.age` once encrypted), timeline `.history`
                                    files, and the segment being written (`*.partial`)
    _wal/<cluster>.receiver.json    the receiver's heartbeat (not a backup file)
    _base/<cluster>/<stem>.*        base backups: files sharing a stem, `<stem>.manifest.json` last
"""
