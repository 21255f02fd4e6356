package journal

import (
	"errors"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/kilnfx/kiln/datastore"
)

// checkRoundTrip re-encodes a decoded record and decodes it again.
func checkRoundTrip(t *testing.T, d *payloadDecoder, r *datastore.UsageRecord) {
	t.Helper()
	b, err := appendFrame(nil, r)
	if err != nil {
		return // over MaxPayload once re-encoded minimally: impossible, but not this test's business
	}
	p, n, err := nextFrame(b)
	if err != nil || n != len(b) {
		t.Fatalf("re-encoded frame: %d of %d bytes, %v", n, len(b), err)
	}
	var again datastore.UsageRecord
	if err := d.decode(p, &again); err != nil {
		t.Fatalf("re-encoded record does not decode: %v", err)
	}
	if !same(again, *r) {
		t.Fatalf("round trip changed the record:\n %+v\n %+v", *r, again)
	}
}

func fuzzSeeds(f *testing.F) [][]byte {
	rng := rand.New(rand.NewPCG(1, 1))
	var seeds [][]byte
	var stream []byte
	for i := range 4 {
		r := record(rng, i)
		b, err := appendFrame(nil, &r)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b, b[:len(b)/2], b[:5])
		stream = append(stream, b...)
	}
	seeds = append(seeds, stream, make([]byte, 64), []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	return seeds
}

// FuzzFrames feeds arbitrary bytes to the frame parser and the payload
// decoder, as a damaged segment would: they must never panic, must report
// only their own error kinds, and what decodes must round-trip.
func FuzzFrames(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var d payloadDecoder
		for len(data) > 0 {
			p, n, err := nextFrame(data)
			if err != nil {
				if !errors.Is(err, errTorn) && !errors.Is(err, errCorrupt) {
					t.Fatalf("nextFrame: unexpected error %v", err)
				}
				return
			}
			if n <= frameHeader || n > len(data) || len(p) != n-frameHeader {
				t.Fatalf("nextFrame consumed %d of %d bytes, payload %d", n, len(data), len(p))
			}
			var r datastore.UsageRecord
			if err := d.decode(p, &r); err == nil {
				checkRoundTrip(t, &d, &r)
			} else if !errors.Is(err, errPayload) {
				t.Fatalf("decode: unexpected error %v", err)
			}
			data = data[n:]
		}
	})
}

// FuzzPayload feeds arbitrary payloads to the decoder directly, since random
// frames rarely get past the CRC.
func FuzzPayload(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		if len(s) > frameHeader {
			f.Add(s[frameHeader:])
		}
	}
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, p []byte) {
		var d payloadDecoder
		var r datastore.UsageRecord
		if err := d.decode(p, &r); err == nil {
			checkRoundTrip(t, &d, &r)
		} else if !errors.Is(err, errPayload) {
			t.Fatalf("decode: unexpected error %v", err)
		}
	})
}

// FuzzDamagedSegment writes records to a journal, damages its segment on
// disk (a byte changed, or the file cut short) where the fuzzer says, and
// reads the journal again. The damage is always detected: the reader
// returns exactly the records wholly before it, unaltered, skips the rest
// of the segment and counts it, and never panics.
func FuzzDamagedSegment(f *testing.F) {
	f.Add(uint8(4), uint16(0), uint8(0))   // the first length byte changed
	f.Add(uint8(4), uint16(5), uint8(1))   // a CRC byte changed
	f.Add(uint8(4), uint16(200), uint8(2)) // a payload byte changed
	f.Add(uint8(4), uint16(3), uint8(3))   // cut inside the first header
	f.Add(uint8(9), uint16(999), uint8(5)) // cut inside a later frame
	f.Add(uint8(1), uint16(0), uint8(255))
	f.Fuzz(func(t *testing.T, count uint8, at uint16, how uint8) {
		n := int(count%16) + 1
		dir := t.TempDir()
		j := openJournal(t, dir)
		rng := rand.New(rand.NewPCG(uint64(count), uint64(at)))
		want := make([]datastore.UsageRecord, n)
		ends := make([]int64, n) // the offset just past each frame
		var off int64
		for i := range want {
			want[i] = record(rng, i)
			b, err := appendFrame(nil, &want[i])
			if err != nil {
				t.Fatal(err)
			}
			off += int64(len(b))
			ends[i] = off
			if err := j.Append(&want[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		segs := segmentFiles(t, dir)
		if len(segs) != 1 {
			t.Fatalf("%d segments", len(segs))
		}
		data, err := os.ReadFile(segs[0])
		if err != nil || int64(len(data)) != off {
			t.Fatalf("segment of %d bytes, want %d: %v", len(data), off, err)
		}
		pos := int64(at) % off
		cut := how%2 == 1
		if cut {
			data = data[:pos]
		} else {
			data[pos] ^= how | 1 // never 0: the byte changes
		}
		if err := os.WriteFile(segs[0], data, 0o644); err != nil {
			t.Fatal(err)
		}

		j = openJournal(t, dir)
		got, _ := readAll(t, j, datastore.JournalPosition{}, 7)
		intact := 0 // frames wholly before the damage
		for intact < n && ends[intact] <= pos {
			intact++
		}
		if len(got) != intact {
			t.Fatalf("%d records read, want the %d before the damage at %d (cut %v)", len(got), intact, pos, cut)
		}
		for i := range got {
			if !same(got[i], want[i]) {
				t.Fatalf("record %d altered:\n %+v\n %+v", i, got[i], want[i])
			}
		}
		atBoundary := pos == 0 || intact > 0 && ends[intact-1] == pos
		if st := j.Stats(); st.BadRecords != 0 || (st.SkippedSegments == 0) != (cut && atBoundary) {
			t.Fatalf("stats %+v after damage at %d (cut %v, at a frame boundary %v)", st, pos, cut, atBoundary)
		}
	})
}
