package datastore

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"time"
)

// Run times are counted in fixed log-scale buckets, 4 per power of two
// (each about 19% wide), from 2^10 ns (about 1 µs) to 2^42 ns (about 73
// minutes):
//
//	bucket 0          [0, 1024 ns)
//	bucket 1+4(e-10)+s [2^e·(1+s/4), 2^e·(1+(s+1)/4))   for 10 ≤ e < 42, s in 0..3
//	bucket 129        [2^42 ns, ∞)
//
// Bucket bounds never change: rollup rows written by any version merge by
// adding counts bucket by bucket.
const (
	histSubBits = 2  // log2 of the buckets per power of two
	histMinExp  = 10 // first power of two with its own buckets
	histMaxExp  = 42 // first power of two in the overflow bucket
	histBuckets = 1 + (histMaxExp-histMinExp)<<histSubBits + 1

	histBlobVersion = 1
)

// runHist counts run times per bucket.
type runHist [histBuckets]uint64

var errBadHist = errors.New("malformed run-time histogram")

// histBucket returns the bucket of a run time of ns nanoseconds; negative
// times count in bucket 0.
func histBucket(ns int64) int {
	if ns < 1<<histMinExp {
		return 0
	}
	e := bits.Len64(uint64(ns)) - 1
	if e >= histMaxExp {
		return histBuckets - 1
	}
	sub := int(uint64(ns)>>(e-histSubBits)) & (1<<histSubBits - 1)
	return 1 + (e-histMinExp)<<histSubBits + sub
}

// histLower returns the smallest run time in bucket i.
func histLower(i int) int64 {
	switch {
	case i <= 0:
		return 0
	case i >= histBuckets-1:
		return 1 << histMaxExp
	}
	e := histMinExp + (i-1)>>histSubBits
	sub := int64((i - 1) & (1<<histSubBits - 1))
	return 1<<e + sub<<(e-histSubBits)
}

func (h *runHist) add(ns int64) { h[histBucket(ns)]++ }

// appendBlob appends h's stored form: a version byte, then for each
// non-empty bucket, in order, the uvarint bucket index and the uvarint count.
func (h *runHist) appendBlob(b []byte) []byte {
	b = append(b, histBlobVersion)
	for i, c := range h {
		if c != 0 {
			b = binary.AppendUvarint(b, uint64(i))
			b = binary.AppendUvarint(b, c)
		}
	}
	return b
}

// mergeBlob adds the counts of a stored histogram to h. On error h may hold
// part of the blob's counts.
func (h *runHist) mergeBlob(b []byte) error {
	if len(b) == 0 || b[0] != histBlobVersion {
		return errBadHist
	}
	b = b[1:]
	for len(b) > 0 {
		i, n := binary.Uvarint(b)
		if n <= 0 || i >= histBuckets {
			return errBadHist
		}
		b = b[n:]
		c, n := binary.Uvarint(b)
		if n <= 0 {
			return errBadHist
		}
		b = b[n:]
		h[i] += c
	}
	return nil
}

// quantile estimates the q-quantile (0 < q ≤ 1) by nearest rank: it finds
// the bucket holding the ceil(q·n)-th smallest run time and interpolates
// linearly inside it, so the estimate always lies in the same bucket as the
// exact value. The overflow bucket answers its lower bound. An empty
// histogram answers 0.
func (h *runHist) quantile(q float64) time.Duration {
	var n uint64
	for _, c := range h {
		n += c
	}
	if n == 0 {
		return 0
	}
	rank := uint64(q * float64(n))
	if float64(rank) < q*float64(n) {
		rank++ // ceil
	}
	rank = min(max(rank, 1), n)
	var below uint64
	for i, c := range h {
		if below+c < rank {
			below += c
			continue
		}
		lo := histLower(i)
		if i == histBuckets-1 {
			return time.Duration(lo)
		}
		width := float64(histLower(i+1) - lo)
		// The midpoint of the rank's share of the bucket: strictly inside it.
		frac := (float64(rank-below) - 0.5) / float64(c)
		return time.Duration(lo + int64(width*frac))
	}
	return time.Duration(histLower(histBuckets - 1)) // not reached
}
