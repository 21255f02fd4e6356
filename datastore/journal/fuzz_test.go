package journal

import (
	"errors"
	"math/rand/v2"
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
