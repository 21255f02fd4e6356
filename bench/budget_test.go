package bench

import "testing"

func TestBudget(t *testing.T) {
	var calls []tracedCall
	for i := int64(1); i <= 10; i++ {
		calls = append(calls, tracedCall{
			"client_sent": 1000, "edge_received": 1000 + i*1000, // 1..10 µs
			"edge_done": 20000, "client_received": 50000, // 30 µs
		})
	}
	calls = append(calls, tracedCall{"client_sent": 1}) // not traced by kilnd: skipped
	segs := budget(calls)
	if len(segs) != 2 {
		t.Fatalf("segments %+v", segs)
	}
	first := segs[0]
	if first.From != "client_sent" || first.To != "edge_received" || first.P50 != 6 || first.P90 != 10 {
		t.Errorf("first segment %+v", first)
	}
	// The segments between are absent, as their points are.
	if segs[1].From != "edge_done" || segs[1].To != "client_received" || segs[1].P50 != 30 {
		t.Errorf("second segment %+v", segs[1])
	}
	if sum := segs[0].Share + segs[1].Share; sum < 0.999 || sum > 1.001 {
		t.Errorf("shares add up to %v", sum)
	}
}
