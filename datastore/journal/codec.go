package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/kilnfx/kiln/datastore"
)

// Frame layout (see the package documentation):
//
//	offset 0  uint32 little-endian  payload length n, 1 ≤ n ≤ MaxPayload
//	offset 4  uint32 little-endian  CRC-32C (Castagnoli) of the payload
//	offset 8  n bytes               payload
const (
	frameHeader = 8

	// MaxPayload is the largest encoded record Append accepts. Records are
	// a few hundred bytes; the limit keeps a damaged length field from
	// making a reader allocate or read far.
	MaxPayload = 64 << 10

	payloadVersion = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	// errTorn: the frame runs past the end of the data (a short write).
	errTorn = errors.New("torn frame")
	// errCorrupt: a length out of bounds or a CRC mismatch.
	errCorrupt = errors.New("corrupt frame")
	// errPayload: the frame is intact but its payload does not decode.
	errPayload = errors.New("undecodable record")
)

// appendFrame appends r's frame to b.
func appendFrame(b []byte, r *datastore.UsageRecord) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	b = appendPayload(b, r)
	p := b[start+frameHeader:]
	if len(p) > MaxPayload {
		return b[:start], fmt.Errorf("record of %d bytes is over the %d-byte limit", len(p), MaxPayload)
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(len(p)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(p, castagnoli))
	return b, nil
}

// parseHeader checks a frame header and returns the payload length and CRC.
func parseHeader(h []byte) (n int, sum uint32, err error) {
	l := binary.LittleEndian.Uint32(h)
	if l == 0 || l > MaxPayload {
		return 0, 0, fmt.Errorf("%w: length %d", errCorrupt, l)
	}
	return int(l), binary.LittleEndian.Uint32(h[4:]), nil
}

// checkPayload compares p with the header's CRC.
func checkPayload(p []byte, sum uint32) error {
	if got := crc32.Checksum(p, castagnoli); got != sum {
		return fmt.Errorf("%w: crc %08x, header says %08x", errCorrupt, got, sum)
	}
	return nil
}

// nextFrame splits the first frame off b and returns its checked payload
// and the frame's length. It reports errTorn when b ends inside the frame
// and errCorrupt when the frame is damaged.
func nextFrame(b []byte) (payload []byte, size int, err error) {
	if len(b) < frameHeader {
		return nil, 0, errTorn
	}
	n, sum, err := parseHeader(b)
	if err != nil {
		return nil, 0, err
	}
	if len(b) < frameHeader+n {
		return nil, 0, errTorn
	}
	p := b[frameHeader : frameHeader+n]
	if err := checkPayload(p, sum); err != nil {
		return nil, 0, err
	}
	return p, frameHeader + n, nil
}

// The payload, version 1: the version byte, then
//
//	strings (uvarint length, bytes): CallID Function Revision Tenant Trigger
//	                                 Start ErrorClass ContainerID Node
//	varints (zig-zag):               ReceivedAt (unix ns) QueueWait InitTime
//	                                 RunTime TotalTime CPUUser CPUSystem
//	                                 MemoryPeakBytes MemoryLimitBytes BytesIn
//	                                 BytesOut Status
//	one byte of flags:               bit 0 Shared
//
// and nothing after. A later version may add fields at the end under a new
// version byte; readers refuse versions they do not know.
func appendPayload(b []byte, r *datastore.UsageRecord) []byte {
	b = append(b, payloadVersion)
	for _, s := range [...]string{r.CallID, r.Function, r.Revision, r.Tenant, r.Trigger,
		r.Start, r.ErrorClass, r.ContainerID, r.Node} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	for _, v := range [...]int64{r.ReceivedAt.UnixNano(), int64(r.QueueWait), int64(r.InitTime),
		int64(r.RunTime), int64(r.TotalTime), int64(r.CPUUser), int64(r.CPUSystem),
		r.MemoryPeakBytes, r.MemoryLimitBytes, r.BytesIn, r.BytesOut, int64(r.Status)} {
		b = binary.AppendVarint(b, v)
	}
	var flags byte
	if r.Shared {
		flags |= 1
	}
	return append(b, flags)
}

// payloadDecoder decodes payloads, sharing the strings that repeat from
// record to record (function, tenant, node, ...) instead of allocating each
// again.
type payloadDecoder struct {
	interned map[string]string
}

const maxInterned = 4096

func (d *payloadDecoder) intern(b []byte) string {
	if s, ok := d.interned[string(b)]; ok { // no allocation for the lookup
		return s
	}
	if d.interned == nil || len(d.interned) >= maxInterned {
		d.interned = make(map[string]string)
	}
	s := string(b)
	d.interned[s] = s
	return s
}

// decode fills r from payload p; on error r is partly filled. It wraps
// errPayload.
func (d *payloadDecoder) decode(p []byte, r *datastore.UsageRecord) error {
	if len(p) == 0 || p[0] != payloadVersion {
		if len(p) == 0 {
			return fmt.Errorf("%w: empty", errPayload)
		}
		return fmt.Errorf("%w: unknown version %d", errPayload, p[0])
	}
	p = p[1:]
	str := func(intern bool) (string, bool) {
		n, k := binary.Uvarint(p)
		if k <= 0 || n > uint64(len(p)-k) {
			return "", false
		}
		b := p[k : k+int(n)]
		p = p[k+int(n):]
		if intern {
			return d.intern(b), true
		}
		return string(b), true
	}
	var ok bool
	if r.CallID, ok = str(false); !ok {
		return fmt.Errorf("%w: call id", errPayload)
	}
	for _, f := range [...]*string{&r.Function, &r.Revision, &r.Tenant, &r.Trigger, &r.Start,
		&r.ErrorClass, &r.ContainerID, &r.Node} {
		if *f, ok = str(true); !ok {
			return fmt.Errorf("%w: string field", errPayload)
		}
	}
	var v [12]int64
	for i := range v {
		x, k := binary.Varint(p)
		if k <= 0 {
			return fmt.Errorf("%w: integer field %d", errPayload, i)
		}
		v[i], p = x, p[k:]
	}
	if v[11] < math.MinInt32 || v[11] > math.MaxInt32 {
		return fmt.Errorf("%w: status %d", errPayload, v[11])
	}
	if len(p) != 1 || p[0]&^1 != 0 {
		return fmt.Errorf("%w: flags or trailing bytes", errPayload)
	}
	r.ReceivedAt = time.Unix(0, v[0]).UTC()
	r.QueueWait, r.InitTime, r.RunTime, r.TotalTime = time.Duration(v[1]), time.Duration(v[2]), time.Duration(v[3]), time.Duration(v[4])
	r.CPUUser, r.CPUSystem = time.Duration(v[5]), time.Duration(v[6])
	r.MemoryPeakBytes, r.MemoryLimitBytes, r.BytesIn, r.BytesOut = v[7], v[8], v[9], v[10]
	r.Status = int(v[11])
	r.Shared = p[0]&1 != 0
	return nil
}
