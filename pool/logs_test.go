package pool

import (
	"strings"
	"testing"
)

func TestLogRingAndLineWriter(t *testing.T) {
	r := NewLogRing(20)
	c := &Container{id: "fn.abc"}
	c.logRing.Store(r)
	w := &lineWriter{c: c, stream: "stderr"}
	_, wake := r.Tail(0)
	w.Write([]byte("one\ntw"))
	select {
	case <-wake:
	default:
		t.Fatal("follower not woken by a new line")
	}
	w.Write([]byte("o\nthree\n"))
	lines, _ := r.Tail(0)
	var got []string
	for _, l := range lines {
		got = append(got, l.Text)
		if l.Container != "fn.abc" || l.Stream != "stderr" {
			t.Errorf("line %+v", l)
		}
	}
	if strings.Join(got, ",") != "one,two,three" {
		t.Fatalf("lines = %v", got)
	}
	// Past the byte budget the oldest lines go.
	w.Write([]byte(strings.Repeat("x", 15) + "\n"))
	lines, _ = r.Tail(0)
	if lines[0].Text == "one" {
		t.Errorf("oldest line kept past the budget: %v", lines)
	}
	if last, _ := r.Tail(1); len(last) != 1 || last[0].Text != strings.Repeat("x", 15) {
		t.Errorf("Tail(1) = %v", last)
	}
	after, _ := r.After(lines[0].Seq)
	if len(after) != len(lines)-1 {
		t.Errorf("After = %v", after)
	}
	// A line longer than maxLine is cut.
	w.Write([]byte(strings.Repeat("y", maxLine+10)))
	if last, _ := r.Tail(1); len(last[0].Text) != maxLine+10 && len(last[0].Text) != maxLine {
		t.Errorf("long line of %d bytes", len(last[0].Text))
	}
}
