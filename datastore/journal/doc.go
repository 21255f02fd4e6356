// Package journal is kiln's usage journal: an append-only log of
// [datastore.UsageRecord] values that the agent writes before it answers a
// call, and that a [datastore.Ingester] moves into SQLite.
//
// # Durability contract
//
// When [Journal.Append] returns nil, the record's bytes are in the kernel
// (one write(2) to a file opened O_APPEND): the record survives the agent
// being killed at any instant, SIGKILL included, because the page cache
// belongs to the kernel. It does not survive a power loss or a kernel crash
// unless the journal is opened [WithSync], which adds an fdatasync(2) per
// Append (milliseconds on most disks) and fsyncs the directory when a segment
// is created. SQLite is updated later, in batches; nothing is acknowledged on
// the strength of SQLite alone.
//
// # Files
//
// A journal is a directory holding segment files named
// usage-<sequence, 20 digits>.log and a LOCK file, flock(2)ed by the one
// Journal that owns the directory. Appends go to the active segment (the
// highest sequence); past the segment size (64 MiB by default) Append seals
// it and starts the next one. [Open] always starts a new segment, so a frame
// torn by a crash is never followed by more frames in its segment; so does a
// failed write. Segments wholly ingested are deleted by [Journal.Ingested].
//
// A segment is a sequence of frames:
//
//	uint32 LE  payload length n (1..MaxPayload)
//	uint32 LE  CRC-32C (Castagnoli) of the payload
//	n bytes    payload: version byte 1, then the record's strings as
//	           uvarint length + bytes, its times and counters as zig-zag
//	           varints, and a flags byte (see codec.go)
//
// # Reading
//
// A reader names a place in the journal with a [datastore.JournalPosition]
// (segment, byte offset of a frame boundary) and asks [Journal.ReadUsage] for
// the records after it. A torn frame (the file ends inside it) or a corrupt
// one (length out of bounds, CRC mismatch) ends its segment for the reader:
// it skips to the next segment, logs a warning and counts it in
// [Stats].SkippedSegments; it never panics. Torn frames can only be the last
// of a segment, and belong to Appends that returned an error.
//
// Records are not deduplicated here: a record appended twice is read
// twice, and the ingester inserts it once.
//
// # Use
//
//	j, err := journal.Open(filepath.Join(dataDir, "usage"))
//	in, err := datastore.NewIngester(store, j)
//	_, err = in.IngestAll(ctx) // what a previous run left
//	go in.Run(ctx)
//	...
//	err = j.Append(&rec) // per call, before answering
//
// [Journal.Lag] gives the number of records appended but not yet ingested.
package journal
